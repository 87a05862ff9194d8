"""Causal perplexity: the value is exp(mean NLL), and the sliding window scores each token once."""
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax.errors import ConfigError
from dirjax.evaluate.perplexity import (
    causal_perplexity,
    sliding_windows,
    tokenize_stream,
    window_arrays,
)

V = 37


class Bigram(nnx.Module):
    """Logits at t depend on token t only: a window's context cannot change any score."""

    def __init__(self, seed=0):
        self.table = nnx.Param(jax.random.normal(jax.random.key(seed), (V, V)))

    def __call__(self, ids, attention_mask=None, token_type_ids=None):
        return self.table[...][ids]


class CausalMean(nnx.Module):
    """Logits at t from the mean embedding of tokens 0..t: every score depends on its context."""

    def __init__(self, seed=0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.emb = nnx.Param(jax.random.normal(k1, (V, 8)))
        self.out = nnx.Param(jax.random.normal(k2, (8, V)))

    def __call__(self, ids, attention_mask=None, token_type_ids=None):
        m = jnp.ones(ids.shape) if attention_mask is None else attention_mask.astype(jnp.float32)
        h = jnp.cumsum(self.emb[...][ids] * m[..., None], axis=1)
        h = h / jnp.maximum(jnp.cumsum(m, axis=1), 1.0)[..., None]
        return 3.0 * h @ self.out[...]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def token_nll(model, ids):
    """NLL `[len(ids) - 1]` of tokens 1.. given the whole prefix, by hand in numpy."""
    logits = np.asarray(model(jnp.asarray(ids)[None]), np.float64)[0]
    return -log_softmax(logits)[np.arange(len(ids) - 1), ids[1:]]


def hf_recipe(model, ids, max_length, stride):
    """Hugging Face's documented loop, one unpadded window at a time: (sum NLL, tokens)."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        window = ids[begin:end]
        labels = window.copy().astype(np.int64)
        labels[:-trg_len] = -100
        nll = token_nll(model, window)
        keep = labels[1:] != -100
        total += nll[keep].sum()
        count += keep.sum()
        prev_end = end
        if end == len(ids):
            break
    return total, int(count)


@pytest.fixture(scope="module")
def stream():
    return np.random.default_rng(0).integers(0, V, size=203).astype(np.int32)


def test_perplexity_is_exp_of_mean_token_nll(stream):
    model = CausalMean()
    ids = stream[:64]
    out = causal_perplexity(model, ids, max_length=64, stride=64, batch_size=2, progress=False)
    nll = token_nll(model, ids)
    assert out["tokens"] == 63
    assert out["nll"] == pytest.approx(nll.mean(), rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)


@pytest.mark.parametrize("max_length,stride", [(32, 8), (50, 17), (64, 63), (16, 1)])
def test_overlapping_windows_score_every_token_once(stream, max_length, stride):
    n = len(stream)
    scored = np.zeros(n, int)
    for begin, end, first in sliding_windows(n, max_length, stride):
        assert end - begin <= max_length and first > begin   # each scored token has context
        scored[first:end] += 1
    assert scored[0] == 0 and (scored[1:] == 1).all()
    # a bigram model sees no context, so the window sum equals the full-stream sum exactly
    model = Bigram()
    out = causal_perplexity(model, stream, max_length=max_length, stride=stride, batch_size=3,
                            progress=False)
    full = token_nll(model, stream)
    assert out["tokens"] == n - 1
    assert out["nll"] == pytest.approx(full.mean(), rel=1e-5)


def test_non_overlapping_windows_skip_each_window_first_token(stream):
    model = Bigram()
    out = causal_perplexity(model, stream, max_length=50, stride=50, batch_size=4, progress=False)
    windows = sliding_windows(len(stream), 50, 50)
    assert len(windows) == 5                                    # 50, 50, 50, 50, 3 tokens
    assert out["tokens"] == len(stream) - 5
    full = token_nll(model, stream)                             # full[t - 1] scores token t
    kept = [t - 1 for t in range(1, len(stream)) if t % 50 != 0]
    assert out["nll"] == pytest.approx(full[kept].mean(), rel=1e-5)


@pytest.mark.parametrize("max_length,stride,batch", [(40, 40, 3), (40, 16, 2), (64, 32, 5)])
def test_matches_hugging_face_recipe_with_context(stream, max_length, stride, batch):
    model = CausalMean(seed=1)
    total, count = hf_recipe(model, stream, max_length, stride)
    out = causal_perplexity(model, stream, max_length=max_length, stride=stride,
                            batch_size=batch, progress=False)
    assert out["tokens"] == count
    assert out["nll"] == pytest.approx(total / count, rel=1e-5)


def test_context_is_carried_over(stream):
    """Overlap gives scored tokens more context, which must change a context model's score."""
    model = CausalMean(seed=2)
    a = causal_perplexity(model, stream, max_length=32, stride=32, progress=False)
    b = causal_perplexity(model, stream, max_length=32, stride=8, progress=False)
    assert a["nll"] != pytest.approx(b["nll"], rel=1e-4)


def test_window_arrays_pad_the_last_window():
    ids = np.arange(1, 11, dtype=np.int32)
    tokens, mask, weights = window_arrays(ids, 4, 4)
    assert tokens.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert weights.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 0]]


def test_bad_window_settings_raise_config_error():
    with pytest.raises(ConfigError):
        sliding_windows(100, 16, 32)
    with pytest.raises(ConfigError):
        sliding_windows(100, 16, 0)


SMOLLM2_REFERENCE_PPL = 28.82   # PyTorch, first 16,384 tokens, 32 windows of 512, 16,352 scored


@pytest.mark.slow
def test_smollm2_wikitext_matches_pytorch_reference():
    from dirjax.data import load_text
    from dirjax.models import load_model

    data_dir = os.environ.get("DIRJAX_DATA_DIR") or str(
        Path(__file__).resolve().parents[1].parent / "shared" / "data")
    model, tokenizer = load_model("smollm2-135m")
    ids = tokenize_stream(tokenizer, load_text("wikitext-2-raw", "test", data_dir), 16384)
    assert len(ids) == 16384
    out = causal_perplexity(model, ids, max_length=512, stride=512, batch_size=4)
    assert out["tokens"] == 16352
    assert out["ppl"] == pytest.approx(SMOLLM2_REFERENCE_PPL, rel=0.005)


def test_a_bos_before_every_window_scores_every_token():
    """[BOS] + window: the BOS is context only, so each window's first token is scored too."""
    from dirjax.evaluate.perplexity import causal_perplexity
    model = CausalMean(seed=2)
    ids = np.random.default_rng(5).integers(1, V, 50)
    out = causal_perplexity(model, ids, max_length=16, batch_size=2, progress=False, bos_id=0)
    assert out["tokens"] == 50
    total = 0.0
    for begin in range(0, 50, 16):
        window = np.concatenate([[0], ids[begin:begin + 16]])
        total += token_nll(model, window).sum()       # every token after the BOS
    assert out["nll"] == pytest.approx(total / 50, rel=1e-5)
