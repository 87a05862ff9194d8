"""dirjax.export_hf: a compressed model as an ordinary Hugging Face checkpoint (config.json,
tokenizer, model.safetensors with the reconstructed table). Round trip through load_model
(no torch), untying for output="original", GGUF sources, and parity with transformers-PyTorch
through the golden fixtures of scripts/fixtures_export.py."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from dirjax import Embedding, export_hf, load_model, swap_embedding
from dirjax.compress import compress
from dirjax.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-llama"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A class definition is executable.",
         "Hello"]


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)


def logits(model, ids, mask) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(_run(graphdef, state, jnp.asarray(ids), jnp.asarray(mask)))


def encode(tok):
    enc = tok(TEXTS, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def check_round_trip(model, emb, output, folder):
    """Export, load back: the logits are those of the model with the dense reconstructed table
    swapped in (bit for bit), and those of the compressed model up to float rounding."""
    small = swap_embedding(model, emb, output)
    out = export_hf(small, folder)
    back, tok = load_model(out)
    ids, mask = encode(tok)
    dense = swap_embedding(model, Embedding(emb.table()), output)
    got = logits(back, ids, mask)
    np.testing.assert_array_equal(got, logits(dense, ids, mask))
    np.testing.assert_allclose(got, logits(small, ids, mask), atol=2e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(back.embedding.table()), np.asarray(emb.table()))
    return (back, json.loads((out / "config.json").read_text()),
            load_file(str(out / "model.safetensors")))


@pytest.mark.parametrize("output", ["tied", "original"])
def test_tied_llama_round_trip_and_untie(tmp_path, output):
    model, _ = load_model(TINY)
    original = np.asarray(model.embedding.table())
    emb = compress(original, rate=10, method="svd")
    back, config, state = check_round_trip(model, emb, output, tmp_path / "hf")
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    if output == "tied":
        assert config["tie_word_embeddings"] is True and "lm_head.weight" not in state
        assert back.tied and back.out_embedding is back.embedding
    else:   # untied: the head keeps the original table
        assert config["tie_word_embeddings"] is False
        np.testing.assert_array_equal(state["lm_head.weight"], original)
        assert not back.tied
    assert all(a.dtype == np.float32 for a in state.values())
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_untied_gpt2_and_gemma3_round_trip(tmp_path):
    for i, (source, method, output) in enumerate([(TINY / "untied", "quant", "tied"),
                                                  (FIXTURES / "tiny-gpt2", "quant", "original"),
                                                  (FIXTURES / "tiny-gemma3", "svd", "tied")]):
        model, _ = load_model(source)
        emb = compress(model.embedding.table(), rate=8, method=method)
        back, config, state = check_round_trip(model, emb, output, tmp_path / f"hf{i}")
        assert type(back) is type(model)
        if source.name == "untied":   # its own head, kept as it was (bf16 values, now fp32)
            assert config["tie_word_embeddings"] is False
            np.testing.assert_array_equal(np.asarray(back.out_embedding.table()),
                                          np.asarray(model.out_embedding.table()))


def test_gguf_source_gets_a_config_json(tmp_path):
    from test_gguf import write_tiny_gguf
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, _ = load_model(gguf_file)
    emb = compress(model.embedding.table(), rate=10, method="quant")
    back, config, _ = check_round_trip(model, emb, "original", tmp_path / "hf")
    hf = json.loads((TINY / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "eos_token_id"):
        assert config[key] == hf[key], key
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
    # the exported tokenizer is the GGUF's own
    _, tok = load_model(gguf_file)
    _, tok_back = load_model(tmp_path / "hf")
    assert tok_back(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]


def test_export_refuses_a_model_that_is_not_its_source(tmp_path):
    model, _ = load_model(TINY)
    emb = compress(model.embedding.table(), rate=10, method="svd")
    small = swap_embedding(model, emb)
    other_model, _ = load_model(TINY)
    other_model.norm.weight.set_value(other_model.norm.weight[...] + 1.0)
    changed = swap_embedding(other_model, emb)
    with pytest.raises(ConfigError, match="differ from its source"):
        export_hf(changed, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to replace"):
        export_hf(small, other)
    export_hf(small, tmp_path / "hf")
    export_hf(small, tmp_path / "hf")    # an export is replaced by the next one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine"]


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3"])
def test_matches_transformers_loading_the_export(name, tmp_path):
    """The compressed model's logits equal those transformers-PyTorch computes from its export
    (golden fixture; redone here deterministically from the tiny fixture)."""
    golden = dict(np.load(FIXTURES / f"golden_export_{name}.npz"))
    model, tok = load_model(FIXTURES / str(golden["fixture"]))
    emb = compress(model.embedding.table(), rate=float(golden["rate"]),
                   method=str(golden["method"]))
    small = swap_embedding(model, emb, str(golden["output"]))
    np.testing.assert_array_equal(encode_texts(tok, golden["texts"])[0], golden["ids"])
    real = golden["mask"] > 0     # (padded positions: each library's own convention)
    # The compression is redone here: its SVD / rounding on another CPU moves a logit of ~0.9
    # by ~1e-4 (seen: 1.05e-4 on one of 63,000), hence the relative term.
    np.testing.assert_allclose(logits(small, golden["ids"], golden["mask"])[real],
                               golden["logits"][real], atol=1e-4, rtol=1e-4)
    back, _ = load_model(export_hf(small, tmp_path / "hf"))     # and the export itself
    np.testing.assert_allclose(logits(back, golden["ids"], golden["mask"])[real],
                               golden["logits"][real], atol=1e-4, rtol=1e-4)


def encode_texts(tok, texts):
    enc = tok([str(t) for t in texts], padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
