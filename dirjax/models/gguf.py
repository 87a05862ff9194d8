"""GGUF files (llama.cpp) of Llama-family models: hyperparameters, dequantised weights, tokenizer.

`read_gguf(path)` turns a GGUF file into what a Hugging Face checkpoint directory holds: a
`config.json`-style dict and `{Hugging Face tensor name: fp32 array}`, so `llama.py` loads both
kinds of source through one weight mapping. Every tensor is dequantised with the `gguf`
package (Q4_1, Q8_0, ... -> fp32). `gguf_tokenizer(path)` builds the tokenizer from the file's
own vocabulary and merges.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dirjax.errors import WeightsError
from dirjax.models.weights import pad_right

# llama.cpp tensor name -> Hugging Face LlamaForCausalLM name; {i} is the layer index.
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# architectures whose GGUF tensors and metadata follow the `llama.*` layout read here
ARCHITECTURES = ("llama",)


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(config dict with Hugging Face LlamaConfig keys, {HF tensor name: fp32 array [out, in]})."""
    path = Path(path)
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(path)
        meta = {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("tokenizer.ggml.")}
        raw = {t.name: dequantize(t.data, t.tensor_type) for t in reader.tensors}
    except Exception as e:  # the gguf package raises ValueError, IndexError, struct errors...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"cannot read GGUF file {path}: {msg}") from None
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise WeightsError(
            f"{path}: GGUF architecture {arch!r} is not supported (dirjax reads Llama-family GGUF)")
    config = hf_config(meta, raw, path)
    state = {}
    for name in list(raw):  # pop as we go: one fp32 copy of the weights at a time
        hf = hf_name(name)
        if hf is None:
            raise WeightsError(f"{path}: unexpected GGUF tensor {name!r}")
        state[hf] = np.asarray(raw.pop(name), dtype=np.float32)
    # llama.cpp's converter permutes the rows of Q and K from Hugging Face's rotate-half RoPE
    # layout to its interleaved one; undo it so our (HF) RoPE sees the original weights.
    for i in range(config["num_hidden_layers"]):
        q, k = (f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qk")
        if q in state:
            state[q] = unpermute_rope(state[q], config["num_attention_heads"])
        if k in state:
            state[k] = unpermute_rope(state[k], config["num_key_value_heads"])
    return config, state


def hf_name(name: str) -> str | None:
    """Hugging Face name of a llama.cpp tensor name, None when unknown."""
    if name in TENSOR_NAMES:
        return TENSOR_NAMES[name]
    parts = name.split(".", 2)  # blk, i, rest
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        template = TENSOR_NAMES.get(f"blk.{{i}}.{parts[2]}")
        return template.format(i=parts[1]) if template else None
    return None


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: w [n_heads * head_dim, d_in] -> same shape.

    llama.cpp stores each head's rows as (head_dim/2 pairs, 2) where HF has (2 halves, head_dim/2).
    """
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(meta: dict, tensors: dict, path: Path) -> dict:
    """LlamaConfig-style dict from the GGUF `llama.*` metadata."""
    def get(key, default=None):
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise WeightsError(f"{path}: GGUF metadata has no llama.{key}")
        return value

    if "rope_freqs.weight" in tensors or "llama.rope.scaling.type" in meta:
        raise WeightsError(f"{path}: GGUF with RoPE scaling (rope_freqs) is not supported yet")
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise WeightsError(f"{path}: partial rotary embeddings are not supported")
    embd = tensors.get("token_embd.weight")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(meta.get("llama.vocab_size", embd.shape[0] if embd is not None else 0)),
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "intermediate_size": int(get("feed_forward_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        # no `output.weight` tensor: llama.cpp ties the head to the token embedding
        "tie_word_embeddings": "output.weight" not in tensors,
    }


def gguf_tokenizer(path: str | os.PathLike):
    """The fast tokenizer described by the file's own vocabulary, merges and special tokens.

    transformers' `AutoTokenizer(..., gguf_file=)` reads the metadata with a reader that
    imports torch; we read it with the `gguf` package and hand it to the same converter
    (`convert_gguf_tokenizer`), so no torch is needed. Right padding (our models assume it);
    the pad token is the file's, else eos.
    """
    from gguf import GGUFReader
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING, _SPECIAL_TOKENS, convert_gguf_tokenizer)

    path = Path(path)
    try:
        fields = GGUFReader(path).fields
        meta = {k: f.contents() for k, f in fields.items()
                if k.startswith("tokenizer.") or k == "general.architecture"}
        group = {g: {name: meta[f"tokenizer.{key}"] for key, name in renames.items()
                     if f"tokenizer.{key}" in meta}
                 for g, renames in GGUF_TOKENIZER_MAPPING.items()}
        tokens, config = group["tokenizer"], group["tokenizer_config"]
        if tokens.get("tokenizer_type") == "llama":   # sentencepiece files add BOS unless told
            config.setdefault("add_bos_token", True)
        for name, key in _SPECIAL_TOKENS.items():
            token_id = meta.get(f"tokenizer.ggml.{key}")
            config[name] = tokens["tokens"][token_id] if token_id is not None else None
        backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tokens)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
    except Exception as e:  # gguf / transformers raise assorted types on bad metadata
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"cannot build the tokenizer of {path}: {msg}") from None
    return pad_right(tokenizer)


def gguf_vocab(path: str | os.PathLike) -> list[str]:
    """The token strings stored in the file (`tokenizer.ggml.tokens`), index = token id."""
    from gguf import GGUFReader

    try:
        return list(GGUFReader(path).fields["tokenizer.ggml.tokens"].contents())
    except Exception as e:
        raise WeightsError(f"cannot read the vocabulary of {path}: {e}".splitlines()[0]) from None
