"""Chunked scoring (a running log-sum-exp over vocabulary slices) equals the full-logit path,
for dense, low-rank and quantised output heads, and for soft-capped logits."""
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dirjax import load_model, swap_embedding
from dirjax.compress import compress
from dirjax.evaluate import causal_perplexity
from dirjax.evaluate.scoring import token_nll

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny():
    return load_model(FIXTURES / "tiny-llama")


@pytest.mark.parametrize("method", [None, "svd", "quant", "vq"])
def test_chunked_perplexity_equals_the_full_logits(tiny, method):
    """Chunks of 128 rows (2 x 63 tokens a batch: the quantised heads' scoring path, their
    h R computed once for all chunks, `frame`) against the full logits."""
    model, _ = tiny
    if method is not None:
        options = {"vq": dict(rate=16.0, tiers=((8, 4),), iters=2, refit_iters=1)}
        emb = compress(model.embedding.table(), method=method,
                       **options.get(method, {"rate": 4.0}))
        model = swap_embedding(model, emb, output="tied")
    ids = np.random.default_rng(0).integers(0, 1000, 300)
    full = causal_perplexity(model, ids, max_length=64, batch_size=2, progress=False, chunk=None)
    # 1000 rows in slices of 128: the last slice overlaps the one before (masked columns)
    for chunk in (128, 250):
        got = causal_perplexity(model, ids, max_length=64, batch_size=2, progress=False,
                                chunk=chunk)
        assert got["tokens"] == full["tokens"]
        assert got["nll"] == pytest.approx(full["nll"], rel=1e-5)


def test_token_nll_with_soft_capping_and_a_head_without_attend_chunk(tiny):
    model, _ = tiny
    table = model.embedding.table()

    class RowsOnly:          # an embedding that only looks rows up and attends (no slices)
        vocab_size = table.shape[0]

        def __call__(self, ids):
            return jnp.take(table, ids, axis=0)

        def attend(self, h):
            return h @ table.T

    fake = SimpleNamespace(out_embedding=RowsOnly(),
                           config=SimpleNamespace(final_logit_softcapping=3.0))
    h = jax.random.normal(jax.random.PRNGKey(0), (2, 7, table.shape[1]))
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, 7), 0, table.shape[0])
    full = token_nll(fake, h, targets, chunk=None)
    logits = 3.0 * jnp.tanh((h @ table.T) / 3.0)
    want = (jax.nn.logsumexp(logits, -1)
            - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0])
    np.testing.assert_allclose(full, want, rtol=1e-6)
    np.testing.assert_allclose(token_nll(fake, h, targets, chunk=96), full, rtol=1e-5)
