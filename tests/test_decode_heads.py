"""Tied heads that read codes (quantize.py / vq.py `attend`, `attend_chunk`, through
`codec.logits_by_blocks` / `class_logits`) against the logits of the decoded `table()`, and
generation with them against the table-based head, on the tiny GPT-2, Llama and Gemma 3."""
from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax import load_model, swap_embedding
from dirjax.compress import codec
from dirjax.compress import quantize as Q
from dirjax.compress import vq as VQ
from dirjax.embedding import Embedding
from dirjax.models.generate import generate

FIXTURES = Path(__file__).parent / "fixtures"
V, D, N = 701, 48, 300          # an odd vocabulary: no block size divides it
TIERS = ((16, 4), (8, 4), (4, 4))
FAST = dict(tiers=TIERS, iters=4, refit_iters=2, refine_steps=3)


@functools.cache
def inputs():
    """(table [V, D] with a mean row and spread norms, counts [V], hidden [N, D])."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((V, D)) * np.exp(rng.uniform(0, np.log(4), (V, 1)))
    t += 0.5 * rng.standard_normal(D)
    counts = rng.permutation(1e4 / np.arange(1, V + 1) ** 1.1).round()
    hidden = rng.standard_normal((N, D)) * np.r_[np.full(3, 6.0), np.ones(D - 3)]
    return t.astype(np.float32), counts, hidden.astype(np.float32)


def make(name: str):
    t, c, h = inputs()
    return {
        "quant": lambda: Q.quant_method(t, rate=10),
        "quant_groups_no_frame": lambda: Q.quant_method(t, rate=6, group=16, rotate=False,
                                                        center=False),
        "quant_uniform": lambda: Q.quantize(t, rate=5, group=24),
        "quant_freq": lambda: Q.quant_freq_method(t, rate=10, counts=c),
        "quant_gptq": lambda: Q.quant_gptq_method(t, rate=10, counts=c, hidden=h, group=16),
        "vq": lambda: VQ.vq_method(t, rate=16, counts=c, hidden=h, **FAST),
        "vq_fp16": lambda: VQ.vq_method(t, rate=16, counts=c, norm="fp16", **FAST),
        "vq_plain": lambda: VQ.vq_method(t, rate=16, counts=c, norm="none", **FAST),
        "vq_one_tier": lambda: VQ.vq_method(t, rate=16, tiers=((8, 4),), center=False,
                                            rotate=False, iters=4, refit_iters=0),
        "vq_empty_tier": empty_tier,
    }[name]()


def empty_tier():
    """Random codes in three tiers, the middle one given no row (the chunks skip it)."""
    rng = np.random.default_rng(5)
    tier = rng.choice([0, 2], V).astype(np.uint8)
    tiers = ((16, 4), (8, 4), (2, 6))
    codes = [rng.integers(0, 2 ** b, (int(np.sum(tier == k)), D // g))
             for k, (g, b) in enumerate(tiers)]
    books = [rng.standard_normal((2 ** b, g)).astype(np.float16) for g, b in tiers]
    gain = rng.uniform(0.5, 2, V).astype(np.float32)
    return VQ.VQEmbedding(tier, codes, books, tiers, gain, D, gain_mode="fp16",
                          mean=rng.standard_normal(D), seed=1)


METHODS = ["quant", "quant_groups_no_frame", "quant_uniform", "quant_freq", "quant_gptq", "vq",
           "vq_fp16", "vq_plain", "vq_one_tier", "vq_empty_tier"]


@functools.cache
def embedding(name: str):
    return make(name)


def close(got, want):
    """Within fp32 rounding: 1e-5 of the largest logit (the reference adds the rotation back
    into the table first, so the two round differently)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.fixture
def small_blocks(monkeypatch):
    """64-row blocks: V = 701 is 10 whole blocks and a remainder, chunks span several."""
    monkeypatch.setattr(codec, "HEAD_ROWS", 64)


@pytest.mark.parametrize("name", METHODS)
def test_attend_reads_codes_as_the_table_gives(name, small_blocks):
    emb = embedding(name)
    if name == "vq_empty_tier":
        assert 0 in emb.rows_per_tier()
    tab = np.asarray(emb.table())
    h = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, D)), jnp.float32)
    want = np.asarray(h) @ tab.T
    close(emb.attend(h), want)
    graphdef, state = nnx.split(emb)
    close(jax.jit(lambda s, x: nnx.merge(graphdef, s).attend(x))(state, h), want)
    close(emb.attend(h[0, :1]), want[0, :1])        # one token, as a decode step has


@pytest.mark.parametrize("name", METHODS)
# vq: its lookup-table path, its decoding path; both: the scoring path (the chunk decoded once)
@pytest.mark.parametrize("tokens", [1, 5, codec.SCORE_TOKENS])
def test_attend_chunk_any_start_and_size(name, tokens, small_blocks):
    emb = embedding(name)
    tab = np.asarray(emb.table())
    h = jnp.asarray(np.random.default_rng(2).standard_normal((tokens, D)), jnp.float32)
    want = np.asarray(h) @ tab.T
    graphdef, state = nnx.split(emb)
    for size in (1, 64, 100, 300, V):
        chunk = jax.jit(lambda s, x, start, size=size:
                        nnx.merge(graphdef, s).attend_chunk(x, start, size))
        for start in (0, 3, 64, 129, 650, V - size):
            at = min(start, V - size)         # a chunk past the end is clamped to end at V
            close(chunk(state, h, start), want[:, at:at + size])   # start traced
        close(emb.attend_chunk(h, 129 if size < V - 129 else 0, size),   # start a Python int
              want[:, (129 if size < V - 129 else 0):][:, :size])


@pytest.mark.parametrize("name", ["quant_freq", "vq"])
def test_a_decode_step_writes_no_float_table(name):
    """The compiled head of one token holds temporaries far below the `[V, d]` fp32 table
    (the table-based head needs the whole table)."""
    t = np.random.default_rng(3).standard_normal((16384, D)).astype(np.float32)
    counts = np.arange(16384, 0, -1).astype(np.float64)
    emb = (Q.quant_freq_method(t, rate=10, counts=counts) if name == "quant_freq" else
           VQ.vq_method(t, rate=16, counts=counts, **{**FAST, "refine_steps": 0}))
    graphdef, state = nnx.split(emb)
    h = jnp.ones((1, D), jnp.float32)

    def temp(f):
        return jax.jit(f).lower(state, h).compile().memory_analysis().temp_size_in_bytes
    table = t.size * 4
    assert temp(lambda s, x: x @ nnx.merge(graphdef, s).table().T) >= table
    assert temp(lambda s, x: nnx.merge(graphdef, s).attend(x)) < table / 8


# ----------------------------------------------------------------------------- generation
@functools.cache
def tiny(name: str):
    """(model, prompts, calibration {counts, hidden}) of a tiny checkpoint."""
    model, tokenizer = load_model(FIXTURES / name)
    prompts = [tokenizer(t)["input_ids"] for t in
               ["The quick brown", "Hello world, this is a somewhat longer prompt", "A"]]
    rng = np.random.default_rng(4)
    v = model.config.vocab_size
    ids = rng.integers(0, v, (4, 64)).astype(np.int32)
    hidden = np.asarray(model.encode(jnp.asarray(ids))).reshape(-1, model.embedding.features)
    return model, prompts, {"counts": rng.permutation(1e3 / np.arange(1, v + 1)).round(),
                            "hidden": hidden}


@pytest.mark.parametrize("fixture", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("method", ["quant_gptq", "vq"])
def test_greedy_tokens_equal_the_table_based_heads(fixture, method):
    """A compressed table swapped in (input and tied head): the head reading codes generates
    the tokens of a dense head holding the decoded table, rows padded on either side."""
    from dirjax.compress import compress
    model, prompts, calib = tiny(fixture)
    options = {"tiers": ((16, 4), (8, 4), (4, 4)), "refine_steps": 0} if method == "vq" else {}
    emb = compress(model.embedding.table(), rate=8, method=method, **calib, **options)
    codes = swap_embedding(model, emb)
    table = swap_embedding(model, Embedding(emb.table()))
    for side in ("left", "right"):
        want = generate(table, prompts, 8, padding_side=side, eos_id=None)
        assert generate(codes, prompts, 8, padding_side=side, eos_id=None) == want
    assert want != generate(model, prompts, 8, padding_side="right", eos_id=None)


@pytest.mark.parametrize("fixture", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_a_bf16_model_with_a_compressed_table_decodes_in_bf16(fixture):
    """The looked-up rows (decoded in fp32) are cast to the parameters' dtype: the body does
    not silently run in fp32 on bf16 weights; the head computes from the codes in fp32 and
    returns the activations' dtype."""
    from dirjax.compress import compress
    model, tokenizer = load_model(FIXTURES / fixture, dtype="bfloat16")
    emb = compress(np.asarray(model.embedding.table(), np.float32), rate=6, method="quant")
    small = swap_embedding(model, emb)
    ids = jnp.asarray([tokenizer("The quick brown")["input_ids"]], jnp.int32)
    cache = jax.eval_shape(lambda: small.init_cache(1, ids.shape[1] + 1))
    logits, cache = jax.eval_shape(
        lambda c: small.decode(ids, c, jnp.arange(ids.shape[1])[None]), cache)
    assert logits.dtype == jnp.bfloat16 and cache.k[0].dtype == jnp.bfloat16
    assert len(generate(small, ids[0].tolist(), 4, eos_id=None)) == 4


@pytest.mark.parametrize("name", ["quant_gptq", "vq"])
def test_a_bf16_chunk_comes_back_in_fp32_and_attend_in_h_dtype(name):
    """A bf16 evaluation's log-sum-exp reads the chunk's logits unrounded (fp32); `attend`, the
    decode head, answers in the activations' dtype."""
    emb = embedding(name)
    h = jnp.asarray(np.random.default_rng(3).standard_normal((2, D)), jnp.bfloat16)
    chunk = emb.attend_chunk(h, 0, 64)
    assert chunk.dtype == jnp.float32 and emb.attend(h).dtype == jnp.bfloat16
    want = np.asarray(h.astype(jnp.float32)) @ np.asarray(emb.table())[:64].T
    close(chunk, want)
