"""GGUF files (llama.cpp) of Llama-family and Gemma 3 models: hyperparameters, dequantised
weights, tokenizer.

`read_gguf(path)` turns a GGUF file into what a Hugging Face checkpoint directory holds: a
`config.json`-style dict and `{Hugging Face tensor name: fp32 array}`, so `llama.py` and
`gemma3.py` load both kinds of source through one weight mapping each. Every tensor is
dequantised with the `gguf` package (Q4_1, Q8_0, ... -> fp32), and what llama.cpp's converter
changed is undone (Llama's Q/K row permutation, Gemma's norm offset). `gguf_tokenizer(path)`
builds the tokenizer from the file's own vocabulary and merges. `gguf_architecture(path)` reads
only the architecture, to pick the model file.
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

# llama.cpp tensor name -> Hugging Face Gemma3ForCausalLM name. Beware `ffn_norm`: the norm
# before the MLP, which Llama calls post_attention_layernorm and Gemma pre_feedforward_layernorm.
GEMMA3_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# the GGUF architectures read here, with their tensor names (metadata keys: `<arch>.*`)
ARCHITECTURES = {"llama": TENSOR_NAMES, "gemma3": GEMMA3_TENSOR_NAMES}


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(config dict with Hugging Face config keys, {HF tensor name: fp32 array [out, in]})."""
    path = Path(path)
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(path)
        meta = {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("tokenizer.ggml.")}
        raw = {t.name: dequantize(t.data, t.tensor_type) for t in reader.tensors}
    except Exception as e:  # the gguf package raises ValueError, IndexError, struct errors...
        end = truncated_at(path)
        if end is not None:
            part = "tensor data" if end > 0 and _header_whole(path) else "header"
            msg = f"truncated at byte {end:,} (the file ends inside its {part})"
        else:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"cannot read GGUF file {path}: {msg}") from None
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise WeightsError(f"{path}: GGUF architecture {arch!r} is not supported "
                           f"(dirjax reads {', '.join(ARCHITECTURES)} GGUF)")
    config = hf_config(meta, raw, path) if arch == "llama" else gemma3_hf_config(meta, raw, path)
    state = {}
    for name in list(raw):  # pop as we go: one fp32 copy of the weights at a time
        hf = hf_name(name, arch)
        if hf is None:
            raise WeightsError(f"{path}: unexpected GGUF tensor {name!r}")
        state[hf] = np.asarray(raw.pop(name), dtype=np.float32)
        # llama.cpp stores Gemma's zero-centred norm weights w as 1 + w (convert_hf_to_gguf.py,
        # Gemma3Model; transformers' Gemma2TensorProcessor subtracts the 1 again), q/k norms too
        if arch == "gemma3" and name.endswith("norm.weight"):
            state[hf] = state[hf] - 1.0  # a new array: F32 tensors are read-only maps
    if arch == "gemma3":
        return config, state  # Gemma's Q/K rows are stored as Hugging Face has them
    # llama.cpp's converter permutes the rows of Q and K from Hugging Face's rotate-half RoPE
    # layout to its interleaved one; undo it so our (HF) RoPE sees the original weights.
    for i in range(config["num_hidden_layers"]):
        q, k = (f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qk")
        if q in state:
            state[q] = unpermute_rope(state[q], config["num_attention_heads"])
        if k in state:
            state[k] = unpermute_rope(state[k], config["num_key_value_heads"])
    return config, state


def hf_name(name: str, arch: str = "llama") -> str | None:
    """Hugging Face name of a llama.cpp tensor name of architecture `arch`, None when unknown."""
    names = ARCHITECTURES[arch]
    if name in names:
        return names[name]
    parts = name.split(".", 2)  # blk, i, rest
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        template = names.get(f"blk.{{i}}.{parts[2]}")
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


def gemma3_hf_config(meta: dict, tensors: dict, path: Path) -> dict:
    """Gemma3TextConfig-style dict (transformers v4 spelling) from the GGUF `gemma3.*` metadata.

    What the file does not state is what llama.cpp hard-codes for Gemma 3 (llama-model.cpp):
    every 6th layer global, the others sliding with RoPE base 10,000 and no scaling; scores
    scaled by head_dim^-0.5, except in the 62-layer 27B model, (hidden / heads)^-0.5. Newer
    files may state the pattern (`attention.sliding_window_pattern`: a period, or one flag per
    layer, true = sliding) and the local base (`rope.freq_base_swa`)."""
    def get(key, default=None):
        value = meta.get(f"gemma3.{key}", default)
        if value is None:
            raise WeightsError(f"{path}: GGUF metadata has no gemma3.{key}")
        return value

    hidden, heads, layers = (int(get("embedding_length")), int(get("attention.head_count")),
                             int(get("block_count")))
    head_dim = int(get("attention.key_length", 256))
    if int(meta.get("gemma3.rope.dimension_count", head_dim)) != head_dim:
        raise WeightsError(f"{path}: partial rotary embeddings are not supported")
    window = meta.get("gemma3.attention.sliding_window")
    scaling = meta.get("gemma3.rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise WeightsError(f"{path}: GGUF RoPE scaling {scaling!r} is not supported (linear only)")
    pattern = meta.get("gemma3.attention.sliding_window_pattern", 6)
    if not window:  # no sliding window in the file: every layer global (LLAMA_SWA_TYPE_NONE)
        layer_types = ["full_attention"] * layers
    elif isinstance(pattern, list):
        layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
    else:
        layer_types = ["sliding_attention" if (i + 1) % int(pattern) else "full_attention"
                       for i in range(layers)]
    embd = tensors.get("token_embd.weight")
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(meta.get("gemma3.vocab_size", embd.shape[0] if embd is not None else 0)),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "intermediate_size": int(get("feed_forward_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
        "sliding_window": int(window) if window else None,
        "layer_types": layer_types,
        "rope_theta": float(get("rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": float(get("rope.freq_base_swa", 10_000.0)),
        "rope_scaling": ({"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
                         if scaling == "linear" else None),
        "final_logit_softcapping": float(meta.get("gemma3.final_logit_softcapping") or 0) or None,
        "max_position_embeddings": int(get("context_length", 131_072)),
        "tie_word_embeddings": "output.weight" not in tensors,
    }


def gguf_architecture(path: str | os.PathLike) -> str | None:
    """`general.architecture` of a GGUF file, read from the head of the file alone (GGUFReader
    would parse every field, a 262k-token vocabulary included); None when the file does not
    start with it, as llama.cpp's writer makes it do."""
    import struct

    try:
        with open(path, "rb") as f:
            magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or n_kv < 1:
                return None
            (key_len,) = struct.unpack("<Q", f.read(8))
            if key_len > 256 or f.read(key_len) != b"general.architecture":
                return None
            value_type, value_len = struct.unpack("<IQ", f.read(12))
            if value_type != 8 or value_len > 256:  # 8: a string
                return None
            return f.read(value_len).decode("utf-8")
    except (OSError, struct.error, UnicodeDecodeError):
        return None


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
        _SPECIAL_TOKENS,
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

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


def _walk(path) -> tuple[int, int] | None:
    """(end of the header and tensor infos, end of the tensor data) by the GGUF layout, or None
    when the file is not GGUF at all; raises EOFError where the file ends too early."""
    import struct

    from gguf.constants import GGML_QUANT_SIZES

    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise EOFError
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    def string():
        nonlocal pos
        (n,) = take("<Q")
        if pos + n > len(data):
            raise EOFError
        pos += n
        return data[pos - n:pos]

    scalars = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            item, count = take("<IQ")
            return [value(item) for _ in range(count)]
        return take(scalars[kind])[0]

    if data[:4] != b"GGUF":
        return None if len(data) >= 4 else (0, 0)
    _, n_tensors, n_kv = take("<4xIQQ")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        (kind,) = take("<I")
        v = value(kind)
        if key == b"general.alignment":
            alignment = int(v)
    end = 0
    for _ in range(n_tensors):
        string()
        (n_dims,) = take("<I")
        dims = take(f"<{n_dims}Q")
        kind, offset = take("<IQ")
        block, size = GGML_QUANT_SIZES[kind]
        end = max(end, offset + int(np.prod(dims)) // block * size)
    start = -(-pos // alignment) * alignment
    return pos, start + end


def truncated_at(path) -> int | None:
    """The file's size when it ends before its own layout does (a cut-short download or copy),
    else None."""
    size = os.path.getsize(path)
    try:
        ends = _walk(path)
    except EOFError:
        return size
    except Exception:   # not truncated: corrupt some other way
        return None
    return size if ends is not None and ends[1] > size else None


def _header_whole(path) -> bool:
    try:
        return _walk(path) is not None
    except Exception:
        return False
