import jax
import numpy as np
import pytest

from dirjax.compress import CompressedEmbedding, compress
from dirjax.compress.svd import exact_svd, randomized_svd
from dirjax.embedding import LowRankEmbedding, compression_rate


def low_rank_table(v=400, d=24, r=6, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((v, r)) @ rng.standard_normal((r, d))
    t = t + noise * rng.standard_normal((v, d))
    return t.astype(np.float32)


def test_full_rank_svd_reconstructs_to_fp32_precision():
    t = low_rank_table(r=24)
    codes, weight = exact_svd(t, 24)  # k = d: the method API refuses it (no compression)
    err = np.abs(np.asarray(codes @ weight) - t).max()
    assert err < 1e-5 * np.abs(t).max()


def test_svd_embedding_is_a_low_rank_module_with_metrics():
    t = low_rank_table(noise=0.01)
    emb = compress(t, rank=6, method="svd")
    assert isinstance(emb, CompressedEmbedding) and isinstance(emb, LowRankEmbedding)
    assert emb.rank == 6 and emb.codes.shape == (400, 6) and emb.weight.shape == (6, 24)
    assert compression_rate(emb) == pytest.approx(400 * 24 / (400 * 6 + 6 * 24 + 24))
    np.testing.assert_allclose(np.asarray(emb(np.array([[3, 7]]))[0]), t[[3, 7]], atol=0.05)
    assert emb.metrics["cos_mean"] > 0.999 and emb.metrics["rel_frobenius"] < 0.01


def test_truncation_is_optimal_eckart_young():
    t = low_rank_table(r=24)
    emb = compress(t, rank=5, method="svd")
    s = np.linalg.svd(t.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(t - np.asarray(emb.table())),
                               np.sqrt(np.sum(s[5:] ** 2)), rtol=1e-4)


def test_randomized_svd_matches_exact_on_a_decaying_spectrum():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((2000, 64)))
    v, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    t = ((u * 0.8 ** np.arange(64)) @ v.T).astype(np.float32)
    ce, we = exact_svd(t, 10)
    cr, wr = randomized_svd(t, jax.random.PRNGKey(0), 10, n_iter=4)
    np.testing.assert_allclose(np.asarray(cr @ wr), np.asarray(ce @ we), atol=1e-4)
    # the method picks the randomized path above the size threshold
    emb = compress(t, rank=10, method="svd", exact=False, n_iter=2)
    assert emb.metrics["rel_frobenius"] == pytest.approx(
        float(np.linalg.norm(t - np.asarray(ce @ we)) / np.linalg.norm(t)), rel=1e-3)
