"""compute_dtype "bfloat16" (issue 28): bf16 matmul operands, fp32 sums, fp32 norms, softmax,
log-sum-exp and loss. Its scores stay within stated tolerances of fp32 on the tiny GPT-2,
BERT, Llama and Gemma 3 and for every embedding kind; every matmul of a bf16 evaluation reads
bf16 and sums in fp32 (the quantised heads' products too, when scoring; decoding one token
keeps fp32); the loss is fp32 where a bf16 one would visibly lose precision."""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax import Embedding, load_model, swap_embedding
from dirjax.compress import codec, compress
from dirjax.evaluate import causal_perplexity, mlm_perplexity, sentence_embeddings
from dirjax.evaluate.batching import compute_state
from dirjax.evaluate.perplexity import _causal_nll, _masked_nll, mask_lines
from dirjax.evaluate.scoring import token_nll

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("tiny-gpt2", "tiny-llama", "tiny-gemma3", "tiny-bert")
TEXT = ["The quick brown fox jumps over the lazy dog, again and again and again.", "Hello world"]

# Tolerances of bf16 against fp32 (measured 2026-12-03 on these fixtures: mean |logit change|
# 0.7-1.8% of the logits' standard deviation; NLL changes 0.0013-0.0065 nats of ~8.9; with the
# quantised heads' products in bf16 too, tiny Llama: dense 0.0065, quant 0.0062, quant in
# groups of 16 0.0021, vq 0.0032; on the real SmolLM2, 4,096 stdlib tokens: ppl 17.216
# against 17.220).
LOGIT_TOL = 0.04     # mean |bf16 logit - fp32 logit| / std(fp32 logits)
NLL_TOL = 0.01       # |bf16 NLL - fp32 NLL| in nats per token (ppl within 1%)


@functools.cache
def loaded(name: str):
    return load_model(FIXTURES / name)


def batch(tokenizer):
    enc = tokenizer(TEXT, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def logits(model, ids, mask, compute_dtype: str) -> np.ndarray:
    """The model's logits `[B, T, V]` as fp32 numpy, its state cast to `compute_dtype`."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m).astype(jnp.float32))
    return np.asarray(run(compute_state(state, compute_dtype), ids, mask))


@pytest.mark.parametrize("name", MODELS)
def test_bf16_logits_are_within_tolerance_of_fp32(name):
    model, tokenizer = loaded(name)
    ids, mask = batch(tokenizer)
    want, got = (logits(model, ids, mask, dt) for dt in ("float32", "bfloat16"))
    real = mask > 0
    err = np.abs(got - want)[real].mean() / want[real].std()
    assert 0 < err < LOGIT_TOL, err          # > 0: bf16 did run (not silently fp32)


def test_the_float32_mode_leaves_the_state_as_loaded():
    model, _ = loaded("tiny-llama")
    state = nnx.split(model)[1]
    assert compute_state(state, "float32") is state
    bf16 = compute_state(state, "bfloat16")
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}   # untouched


# ----------------------------------------------------------------------------- every kind

@functools.cache
def embedding(kind: str):
    """The tiny Llama's table compressed by `kind` (None: the dense table itself)."""
    table = np.asarray(loaded("tiny-llama")[0].embedding.table())
    rng = np.random.default_rng(0)
    v, d = table.shape
    return {
        "dense": lambda: None,
        "svd": lambda: compress(table, rate=4.0, method="svd"),
        "quant": lambda: compress(table, rate=6.0, method="quant"),
        "quant_groups": lambda: compress(table, rate=6.0, method="quant", group=16),
        "vq": lambda: compress(table, rate=8.0, method="vq", tiers=((16, 4), (8, 4), (4, 4)),
                               iters=4, refit_iters=2, refine_steps=3,
                               counts=rng.permutation(1e4 / np.arange(1, v + 1) ** 1.1).round(),
                               hidden=rng.standard_normal((300, d)).astype(np.float32)),
    }[kind]()


@pytest.mark.parametrize("kind", ["dense", "svd", "quant", "vq"])
def test_bf16_perplexity_of_every_embedding_kind_is_within_tolerance(kind):
    model, _ = loaded("tiny-llama")
    emb = embedding(kind)
    model = model if emb is None else swap_embedding(model, emb)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 300)
    for chunk in (None, 128):     # full logits; slices of 128 rows (1000 = 7 x 128 + 104)
        fp32, bf16 = (causal_perplexity(model, ids, max_length=64, batch_size=2, chunk=chunk,
                                        progress=False, compute_dtype=dt)["nll"]
                      for dt in ("float32", "bfloat16"))
        assert 0 < abs(bf16 - fp32) < NLL_TOL, (kind, chunk, fp32, bf16)


def test_bf16_masked_lm_perplexity_and_sentence_embeddings_are_within_tolerance():
    model, tokenizer = loaded("tiny-bert")
    examples = mask_lines(tokenizer, TEXT * 3, min_tokens=5)
    fp32, bf16 = (mlm_perplexity(model, examples, batch_size=2, progress=False,
                                 compute_dtype=dt)["nll"] for dt in ("float32", "bfloat16"))
    assert 0 < abs(bf16 - fp32) < NLL_TOL, (fp32, bf16)
    a, b = (sentence_embeddings(model, tokenizer, TEXT, batch_size=2, progress=False,
                                compute_dtype=dt)[0] for dt in ("float32", "bfloat16"))
    assert a.dtype == b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos


# ----------------------------------------------------------------------------- the jaxprs

def equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (scan, jit, custom_jvp, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from equations(inner)


def scoring_jaxpr(name: str, kind: str, compute_dtype: str):
    """The jaxpr of one batch of the evaluation step of fixture `name` (causal: perplexity
    with vocabulary slices; BERT: masked-LM perplexity). The batch's rows repeated to at least
    `codec.BF16_TOKENS` tokens: a quantised head scores as many in bf16 (fewer, decoding,
    stay fp32)."""
    model, tokenizer = loaded(name)
    emb = embedding(kind)
    model = model if emb is None else swap_embedding(model, emb)
    graphdef, state = nnx.split(model)
    ids, mask = batch(tokenizer)
    reps = -(-codec.BF16_TOKENS // ids.size)
    ids, mask = np.tile(ids, (reps, 1)), np.tile(mask, (reps, 1))
    if name == "tiny-bert":
        fn = functools.partial(_masked_nll, graphdef)
    else:
        fn = functools.partial(_causal_nll, graphdef, chunk=128)
    return jax.make_jaxpr(fn)(compute_state(state, compute_dtype), ids, mask, mask).jaxpr


def dot_generals(jaxpr):
    return [e for e in equations(jaxpr) if e.primitive.name == "dot_general"]


def assert_bf16_operands_fp32_sums(dots):
    for e in dots:
        operands = [v.aval.dtype for v in e.invars]
        assert operands == [jnp.bfloat16] * 2, (e, operands)
        assert e.outvars[0].aval.dtype == jnp.float32, e


@pytest.mark.parametrize("name,kind", [(m, "dense") for m in MODELS]
                         + [("tiny-llama", k) for k in ("svd", "quant", "vq")])
def test_every_matmul_of_a_bf16_evaluation_reads_bf16_and_sums_in_fp32(name, kind):
    """The quantised kinds too: their heads' products (a block of rows decoded from the codes
    against h R) and their lookups' rotation."""
    dots = dot_generals(scoring_jaxpr(name, kind, "bfloat16"))
    assert len(dots) > 10
    assert_bf16_operands_fp32_sums(dots)


def macs(e) -> int:
    """Multiply-adds of a dot_general equation."""
    (contract, _), _ = e.params["dimension_numbers"]
    lhs = e.invars[0].aval.shape
    return int(np.prod(e.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))


def head(emb, h, start, size, compute_dtype):
    """(jaxpr, fp32 logits `[..., size]`) of `emb.attend_chunk(h, start, size)`, the
    embedding's state cast to `compute_dtype` as an evaluation casts it."""
    graphdef, state = nnx.split(emb)
    state = compute_state(state, compute_dtype)

    def fn(st, x):
        return nnx.merge(graphdef, st).attend_chunk(x, start, size)
    out = jax.jit(fn)(state, h)
    assert out.dtype == jnp.float32                     # unrounded logits either way
    return jax.make_jaxpr(fn)(state, h).jaxpr, np.asarray(out)


@pytest.mark.parametrize("kind", ["quant", "quant_groups", "vq"])
def test_a_quantised_head_scores_bf16_states_with_bf16_products_summed_in_fp32(kind):
    """Scoring bf16 states (many tokens), a quantised head's big product (V x d a token) reads
    bf16 operands and sums in fp32: the bf16 products cover at least n x size x d multiply-adds,
    so a head that computed it in fp32 fails. The logits stay close to the fp32 head's on the
    same (bf16-rounded) states; decoding (one token) keeps fp32 products (no bf16
    matrix-vector product, ~10x slower on XLA:CPU); fp32 states are untouched."""
    emb = embedding(kind)
    v, d = emb.vocab_size, emb.features
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.standard_normal((2, 40, d)) * 3, jnp.bfloat16)
    start, size = 200, 300
    jaxpr, got = head(emb, h, start, size, "bfloat16")
    dots = dot_generals(jaxpr)
    assert_bf16_operands_fp32_sums(dots)
    assert sum(macs(e) for e in dots) >= h.size // d * size * d, [macs(e) for e in dots]
    jaxpr32, want = head(emb, h.astype(jnp.float32), start, size, "float32")
    assert {e.invars[0].aval.dtype for e in dot_generals(jaxpr32)} == {jnp.dtype(jnp.float32)}
    err = np.abs(got - want)
    print(f"{kind}: max |bf16 - fp32 logit| {err.max():.4f}, std {want.std():.3f}")
    assert 0 < err.mean() / want.std() < LOGIT_TOL, (err.mean(), want.std())
    # the tied head of the whole vocabulary (attend) keeps h's dtype
    graphdef, state = nnx.split(emb)
    full = jax.jit(lambda st, x: nnx.merge(graphdef, st).attend(x))(
        compute_state(state, "bfloat16"), h)
    assert full.dtype == jnp.bfloat16 and full.shape == (2, 40, v)
    np.testing.assert_allclose(np.asarray(full[..., start:start + size], np.float32), got,
                               rtol=2 ** -7, atol=1e-3)
    # decoding one token: fp32 products
    one, _ = head(emb, h[:1, :1], start, size, "bfloat16")
    assert {e.invars[0].aval.dtype for e in dot_generals(one)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", MODELS)
def test_norms_softmax_and_loss_of_a_bf16_evaluation_run_in_fp32(name):
    """Every normalisation statistic, exponential, logarithm and maximum (RMSNorm/LayerNorm
    statistics, softmax, the running log-sum-exp, the loss) is computed in fp32."""
    fp32_only = {"exp", "log", "rsqrt", "reduce_max", "max", "div"}
    eqns = [e for e in equations(scoring_jaxpr(name, "dense", "bfloat16"))
            if e.primitive.name in fp32_only
            and jnp.issubdtype(e.outvars[0].aval.dtype, jnp.floating)]   # not index clamps
    assert {e.primitive.name for e in eqns} >= {"exp", "log", "rsqrt", "reduce_max"}
    for e in eqns:
        assert e.outvars[0].aval.dtype == jnp.float32, e


def test_a_bf16_log_sum_exp_would_lose_precision_and_token_nll_does_not():
    """Logits of ~200 (bf16 spaces its numbers 1.0 apart there) from bf16 operands: the loss
    from fp32 sums and an fp32 log-sum-exp matches float64 on the same operands to 1e-3 nats,
    where rounding the logits or the log-sum-exp to bf16 is off by ~0.1-0.5."""
    rng = np.random.default_rng(0)
    v, d = 1000, 64
    table = jnp.asarray(rng.standard_normal((v, d)), jnp.bfloat16)
    h = jnp.asarray(rng.standard_normal((2, 9, d)) * 25, jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, v, (2, 9)), jnp.int32)
    model = SimpleNamespace(out_embedding=Embedding(table), config=SimpleNamespace())
    h64, t64 = np.asarray(h, np.float64), np.asarray(table, np.float64)
    exact = h64 @ t64.T                                                       # [2, 9, V]
    m = exact.max(-1)
    want = m + np.log(np.exp(exact - m[..., None]).sum(-1)) - np.take_along_axis(
        exact, np.asarray(targets)[..., None], -1)[..., 0]
    assert np.abs(exact).max() > 150
    for chunk in (None, 128):
        got = token_nll(model, h, targets, chunk=chunk)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-3)
    rounded = jnp.asarray(exact, jnp.bfloat16)
    bf16_lse = jax.nn.logsumexp(rounded, axis=-1) - jnp.take_along_axis(
        rounded, targets[..., None], axis=-1)[..., 0]
    assert np.abs(np.asarray(bf16_lse, np.float64) - want).max() > 0.1
