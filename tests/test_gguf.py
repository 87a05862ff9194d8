"""GGUF loading: a tiny GGUF written here from the tiny-llama fixture as llama.cpp's converter
would (Q/K rows permuted, ggml names, tokenizer vocab + merges in the metadata) must give the
same model and tokenizer; corrupt files fail with WeightsError. SmolLM2 checks: test_llama.py."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax import load_model
from dirjax.errors import WeightsError
from dirjax.models.gguf import TENSOR_NAMES, hf_name, read_gguf, unpermute_rope
from dirjax.models.weights import read_safetensors

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-llama"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute` (HF rotate-half rows -> interleaved pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path: Path, qtype=gguf.GGMLQuantizationType.F32) -> Path:
    """The tiny-llama fixture as a llama.cpp GGUF; matrices stored as `qtype` (F32 or Q8_0)."""
    config = json.loads((TINY / "config.json").read_text())
    state = read_safetensors(TINY)
    tok = json.loads((TINY / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    # tokenizer: the BPE's vocabulary by id and its merges, as llama.cpp stores a gpt2-style BPE
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                       for t, _ in vocab])
    w.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_add_bos_token(False)
    names = {hf.format(i=i): ggml.format(i=i)  # HF name -> llama.cpp name
             for ggml, hf in TENSOR_NAMES.items() for i in range(config["num_hidden_layers"])}
    for hf, x in state.items():
        if hf == "lm_head.weight":
            continue  # tied: llama.cpp writes no output.weight
        if hf.endswith("q_proj.weight"):
            x = llama_cpp_permute(x, heads)
        elif hf.endswith("k_proj.weight"):
            x = llama_cpp_permute(x, kv_heads)
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(names[hf], gguf.quants.quantize(x, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(names[hf], x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.default_rng(0).normal(size=(2 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rope(llama_cpp_permute(w, 2), 2), w)
    assert not np.array_equal(llama_cpp_permute(w, 2), w)


def test_llama_cpp_names():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.12.attn_k.weight") == "model.layers.12.self_attn.k_proj.weight"
    assert hf_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    assert hf_name("blk.3.attn_qkv.weight") is None


def test_read_gguf_gives_hf_tensors_and_config(tiny_gguf):
    config, state = read_gguf(tiny_gguf)
    hf = json.loads((TINY / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size"):
        assert config[key] == hf[key], key
    assert config["tie_word_embeddings"] is True
    original = read_safetensors(TINY)
    assert set(state) == set(original) - {"lm_head.weight"}
    for name, x in state.items():  # Q and K un-permuted back to the Hugging Face rows
        np.testing.assert_array_equal(x, original[name], err_msg=name)


def test_gguf_model_matches_golden_logits(tiny_gguf):
    model, tokenizer = load_model(tiny_gguf)
    golden = np.load(FIXTURES / "golden_llama.npz")
    assert model.tied and model.out_embedding is model.embedding
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    logits = run(state, jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"]))
    np.testing.assert_allclose(np.asarray(logits), golden["tied_logits"], atol=1e-4, rtol=0)


def test_gguf_tokenizer_is_built_from_the_file(tiny_gguf):
    """Vocabulary and merges come from the GGUF metadata and tokenize like the original BPE."""
    _, from_gguf = load_model(tiny_gguf)
    _, original = load_model(TINY)
    texts = ["The quick brown fox jumps over the lazy dog.", "  spaces\tand\nnewlines 1234",
             "Unicode: café 東京 🙂", "def f(x):\n    return x ** 2"]
    for text in texts:
        assert from_gguf(text)["input_ids"] == original(text)["input_ids"], text
    assert from_gguf.convert_ids_to_tokens(list(range(len(original)))) == \
        original.convert_ids_to_tokens(list(range(len(original))))
    assert from_gguf.pad_token_id == original.pad_token_id and from_gguf.padding_side == "right"


def test_quantised_gguf_is_dequantised(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny-llama.Q8_0.gguf", gguf.GGMLQuantizationType.Q8_0)
    assert {t.tensor_type for t in gguf.GGUFReader(path).tensors} == {
        gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32}
    _, state = read_gguf(path)
    original = read_safetensors(TINY)
    for name, x in state.items():
        # Q8_0: blocks of 32, one fp16 scale max|x|/127 each: error about half a step
        bound = np.abs(original[name]).max() / 127 * 0.6
        err = np.abs(x - original[name]).max()
        assert err <= bound, (name, err, bound)
    assert np.abs(state["model.embed_tokens.weight"]
                  - original["model.embed_tokens.weight"]).max() > 0


def test_corrupt_gguf_raises_weights_error(tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    cases = {
        "garbage.gguf": b"this is not a gguf file at all" * 10,
        "empty.gguf": b"",
        "header-only.gguf": data[:64],          # cut inside the metadata
        "no-tensor-data.gguf": data[: len(data) // 2],  # metadata whole, tensor data cut short
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsError) as e:
            load_model(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value), (name, str(e.value))
        if name in ("header-only.gguf", "no-tensor-data.gguf"):   # where it was cut, in words
            assert f"truncated at byte {len(content):,}" in str(e.value), str(e.value)


def test_non_llama_gguf_is_refused(tmp_path):
    path = tmp_path / "bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(WeightsError, match="architecture 'bert'"):
        load_model(path)
