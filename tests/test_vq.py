"""Vector-quantised embeddings (dirjax.compress.vq): bytes, determinism, packing, quality."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax.compress import codec as C
from dirjax.compress import quantize as Q
from dirjax.compress import vq as VQ
from dirjax.embedding import compression_rate
from dirjax.errors import ConfigError, DataError, WeightsError

V, D = 2048, 64
TIERS = ((16, 6), (8, 6), (4, 6), (2, 6))   # 0.375, 0.75, 1.5, 3 bits per entry; small codebooks


def table(seed=0, spread=4.0):
    """Gaussian directions, row norms log-uniform over `spread`x."""
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((V, D)) * np.exp(rng.uniform(0, np.log(spread), (V, 1)))
    return t.astype(np.float32)


def zipf_counts(seed=0):
    return np.random.default_rng(seed).permutation(1e5 / np.arange(1, V + 1) ** 1.1)


def rel_err(emb, t):
    return float(np.linalg.norm(np.asarray(emb.table()) - t) / np.linalg.norm(t))


def make(rate=16, **kw):
    kw = {"tiers": TIERS, "iters": 8, "refit_iters": 4, "counts": zipf_counts(), **kw}
    return VQ.vq_method(table(), rate=rate, **kw)


@pytest.mark.parametrize("norm", ["log8", "fp16", "none"])
@pytest.mark.parametrize("rate", [16, 32])
def test_rate_is_met_in_bytes_everything_counted(norm, rate):
    emb = make(rate, norm=norm)
    assert compression_rate(emb) >= rate
    rows = emb.rows_per_tier()
    assert sum(rows) == V
    codes = sum(-(-n * (D // g) * b // 8) for n, (g, b) in zip(rows, TIERS))
    books = sum(2 ** b * g * 2 for g, b in TIERS)            # fp16 codebooks
    by_hand = (codes + books + (V * 2 + 7) // 8              # 2-bit tier ids (4 tiers)
               + {"log8": V + 8, "fp16": 2 * V, "none": 0}[norm] + 4 * D + 8)
    assert emb.storage_bytes() == by_hand
    assert emb.storage_bytes() > V * D * 4 / rate - 64       # the allocation spends the budget
    arrays, _ = emb.export()                                  # and the export is that packed form
    assert sum(a.nbytes for a in arrays.values()) + 8 + 8 * (norm == "log8") == by_hand


def test_frequent_rows_get_finer_tiers():
    emb, counts = make(16), zipf_counts()
    bpe = np.array([b / g for g, b in TIERS])[np.asarray(emb.tier[...])]
    top, tail = np.argsort(-counts)[:50], np.argsort(counts)[:500]
    assert bpe[top].mean() > bpe[tail].mean() + 0.5


def test_deterministic_per_seed():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for t in range(len(TIERS)):
        np.testing.assert_array_equal(np.asarray(a.tier_codes[t].codes[...]),
                                      np.asarray(b.tier_codes[t].codes[...]))
    np.testing.assert_array_equal(np.asarray(a.table()), np.asarray(b.table()))
    assert not np.array_equal(np.asarray(a.table()), np.asarray(c.table()))


def test_decode_is_the_stored_codes():
    emb = make(16, center=True)
    t = np.asarray(emb.tier[...])
    rot = C.random_rotation(D, emb.seed)
    gain = np.asarray(emb.gain[...])
    tab = np.asarray(emb.table())
    for k, (g, b) in enumerate(TIERS):
        rows = np.flatnonzero(t == k)
        codes = np.asarray(emb.tier_codes[k].codes[...])
        assert codes.shape == (len(rows), D // g) and codes.min() >= 0 and codes.max() < 2 ** b
        book = np.asarray(emb.tier_codes[k].book[...], np.float32)
        by_hand = ((gain[rows, None] * book[codes].reshape(len(rows), D)) @ rot.T
                   + np.asarray(emb.mean[...]))
        np.testing.assert_allclose(tab[rows], by_hand, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [1, 3, 6, 8, 12])
def test_pack_unpack(bits):
    c = np.random.default_rng(bits).integers(0, 2 ** bits, (37, 5))
    p = C.pack_codes(c, bits)
    assert p.dtype == np.uint8 and p.size == -(-c.size * bits // 8)
    np.testing.assert_array_equal(C.unpack_codes(p, bits, c.shape), c)
    with pytest.raises(WeightsError, match="packed codes"):
        C.unpack_codes(p[:-1], bits, c.shape)


@pytest.mark.parametrize("norm", ["log8", "fp16", "none"])
def test_export_restore_round_trip(norm):
    emb = make(16, norm=norm)
    arrays, static = emb.export()
    back = VQ.VQEmbedding.restore(arrays, static, method="vq", meta={"x": 1})
    np.testing.assert_array_equal(np.asarray(back.table()), np.asarray(emb.table()))
    assert back.storage_bytes() == emb.storage_bytes() and back.meta == {"x": 1}


def test_module_calls_agree_with_table_and_jit():
    emb = make(16, hidden=np.random.default_rng(5).standard_normal((400, D)))
    tab = np.asarray(emb.table())
    ids = jnp.array([[0, 5, V - 1], [7, 7, 1]], jnp.int32)
    np.testing.assert_allclose(np.asarray(emb(ids)), tab[np.asarray(ids)], rtol=1e-5, atol=1e-5)
    for shape in [(2, 3, D), (1, D)]:             # the decoded path and the lookup-table path
        h = jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32)
        want = np.asarray(h) @ tab.T
        np.testing.assert_allclose(np.asarray(emb.attend(h)), want, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda x: emb.attend(x))(h)), want,
                                   rtol=1e-4, atol=1e-3)
    graphdef, state = nnx.split(emb)              # what swap_embedding and jit do
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, state).table()), tab)
    assert emb.vocab_size == V and emb.features == D


def test_beats_scalar_codes_at_equal_bytes():
    t = table()
    scalar = rel_err(Q.quant_method(t, rate=16), t)
    vec = rel_err(VQ.vq_method(t, rate=16, tiers=TIERS, iters=8, refit_iters=4), t)
    assert vec < 0.85 * scalar, (vec, scalar)
    with pytest.raises(Q.QuantizeError):           # and goes where a scalar grid cannot
        Q.quant_method(t, rate=32)
    assert rel_err(make(32), t) < 0.8


def test_norm_apart_beats_plain_vector_codes_when_norms_spread():
    t = table(spread=30.0)
    kw = dict(tiers=TIERS, iters=8, refit_iters=4)
    apart = rel_err(VQ.vq_method(t, rate=16, **kw), t)
    plain = rel_err(VQ.vq_method(t, rate=16, norm="none", **kw), t)
    assert apart < plain, (apart, plain)


def test_ldlq_lowers_the_logit_error():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((2000, D)) * np.r_[np.full(4, 10.0), np.full(D - 4, 0.3)]
    near, seq = make(16), make(16, hidden=h, head_weight=1.0, refine_steps=0)

    def logit_err(e):
        return float(np.mean((h @ (np.asarray(e.table()) - table()).T) ** 2))
    assert logit_err(seq) < 0.8 * logit_err(near), (logit_err(seq), logit_err(near))


def test_bad_inputs_raise_clear_errors():
    t = table()
    with pytest.raises(DataError):
        VQ.vq_method(np.full((4, 4), np.nan, np.float32), rate=2)
    with pytest.raises(ConfigError):
        VQ.vq_method(t, rate=16, tiers=((5, 8),))      # 5 does not divide 32
    with pytest.raises(ConfigError):
        VQ.vq_method(t, rank=4)
    with pytest.raises(ConfigError, match="unknown option"):
        VQ.vq_method(t, rate=16, group=8)
    for bad in (dict(tiers=((-8, 2),)), dict(tiers=5), dict(norm="bogus"), dict(iters=-1)):
        with pytest.raises(ConfigError, match=f"vq option {next(iter(bad))} must be"):
            VQ.vq_method(t, rate=16, **bad)
    with pytest.raises(DataError):
        VQ.vq_method(t, rate=16, counts=np.ones(V - 1))
    with pytest.raises(Q.QuantizeError):
        VQ.vq_method(t, rate=200, tiers=TIERS)


def test_refinement_lowers_the_head_kl_with_codes_fixed():
    rng = np.random.default_rng(6)
    t, h = table(), rng.standard_normal((256, D)).astype(np.float32)

    def kl(e):
        zo, z = h @ t.T, h @ np.asarray(e.table()).T
        lo = jax.nn.log_softmax(zo, -1)
        return float(np.mean(np.sum(np.exp(lo) * (lo - jax.nn.log_softmax(z, -1)), -1)))
    base = make(16, hidden=h, refine_steps=0)
    ref = make(16, hidden=h, refine_steps=30, refine_lr=1e-2)
    for k in range(len(TIERS)):                      # the codes are the same
        np.testing.assert_array_equal(np.asarray(base.tier_codes[k].codes[...]),
                                      np.asarray(ref.tier_codes[k].codes[...]))
    assert ref.storage_bytes() == base.storage_bytes()
    assert kl(ref) < 0.8 * kl(base), (kl(ref), kl(base))


def test_mean_probability_is_the_averaged_head_softmax():
    rng = np.random.default_rng(2)
    t, h = table(), rng.standard_normal((700, D)).astype(np.float32)   # 700: a padded chunk
    z = h @ t.T
    p = np.exp(z - z.max(1, keepdims=True))
    ref = (p / p.sum(1, keepdims=True)).mean(0)
    got = VQ.mean_probability(t, h, rows=512)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-9)
    assert abs(got.sum() - 1) < 1e-5


def test_prob_weight_moves_bits_to_rows_the_head_predicts():
    """States that point at a few rows (never counted) make prob_weight give those rows finer
    tiers than the counts alone do; the budget holds either way."""
    rng = np.random.default_rng(3)
    t, counts = table(), zipf_counts()
    favoured = np.argsort(counts)[:20]                     # the least counted rows
    h = 3 * t[rng.choice(favoured, 400)] / np.linalg.norm(t[favoured], axis=1).mean()
    kw = dict(hidden=h, refine_steps=0, ldlq_rounds=1)
    plain, mixed = make(16, **kw), make(16, prob_weight=0.9, **kw)
    bpe = np.array([b / g for g, b in TIERS])
    fine = [bpe[np.asarray(e.tier[...])][favoured].mean() for e in (plain, mixed)]
    assert fine[1] > fine[0] + 0.5, fine
    assert compression_rate(mixed) >= 16
