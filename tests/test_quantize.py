"""Quantised embeddings (dirjax.compress.quantize): bytes, determinism, quality vs SVD."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax.compress import codec as C
from dirjax.compress import quantize as Q
from dirjax.embedding import compression_rate
from dirjax.errors import ConfigError, DataError

V, D = 512, 64


def flat_table(seed=0):
    """Full rank, flat spectrum: low rank can only keep k/d of the energy."""
    return np.random.default_rng(seed).standard_normal((V, D)).astype(np.float32)


def zipf_counts(seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(1e5 / np.arange(1, V + 1) ** 1.1)


def svd_rel_err(table, rate):
    """Best rank-k error with fp32 factors in the same bytes (codes V*k + decoder k*d + bias d)."""
    k = int(V * D / rate - D) // (V + D)
    s = np.linalg.svd(table, compute_uv=False)
    return np.sqrt(np.sum(s[k:] ** 2) / np.sum(s ** 2))


def rel_err(emb, table):
    return float(np.linalg.norm(np.asarray(emb.table()) - table) / np.linalg.norm(table))


@pytest.mark.parametrize("rate", [2, 5, 10])
@pytest.mark.parametrize("opts", [dict(), dict(allocation="frequency", counts=zipf_counts()),
                                  dict(group=16, rotate=False)])
def test_rate_is_met_in_bytes(rate, opts):
    emb = Q.quantize(flat_table(), rate=rate, **opts)
    assert compression_rate(emb) >= rate
    bits = np.asarray(emb.bits[...]).astype(int)
    g = emb.group
    mixed = len(set(bits.tolist())) > 1
    by_hand = (np.sum((D * bits + 7) // 8) + V * (D // g) * 4 + (V + 1) // 2 * mixed
               + 4 * D * (emb.mean is not None) + 8 * (emb.rotation is not None))
    assert emb.storage_bytes() == by_hand
    if mixed:  # the allocation spends the budget: within one row's worth of bytes
        assert emb.storage_bytes() > V * D * 4 / rate - D


def test_codes_fit_their_bits():
    emb = Q.quantize(flat_table(), rate=10, allocation="frequency", counts=zipf_counts())
    codes, bits = np.asarray(emb.codes[...]), np.asarray(emb.bits[...])
    assert np.all(codes < (2 ** bits.astype(int))[:, None])


def test_deterministic_per_seed():
    t = flat_table()
    a, b = Q.quantize(t, rate=10, seed=3), Q.quantize(t, rate=10, seed=3)
    c = Q.quantize(t, rate=10, seed=4)
    np.testing.assert_array_equal(np.asarray(a.codes[...]), np.asarray(b.codes[...]))
    np.testing.assert_array_equal(np.asarray(a.table()), np.asarray(b.table()))
    assert not np.array_equal(np.asarray(a.codes[...]), np.asarray(c.codes[...]))


@pytest.mark.parametrize("rate", [5, 10])
@pytest.mark.parametrize("method", ["quant", "quant_freq", "quant_gptq"])
def test_beats_svd_at_equal_bytes_on_flat_spectrum(rate, method):
    t = flat_table()
    calib = dict(allocation="frequency", counts=zipf_counts(),
                 hidden=np.random.default_rng(4).standard_normal((300, D)))
    fn = {"quant": lambda: Q.quant_method(t, rate=rate),
          "quant_freq": lambda: Q.quant_freq_method(t, rate=rate, counts=calib["counts"]),
          "quant_gptq": lambda: Q.quant_gptq_method(t, rate=rate, **calib)}[method]
    err = rel_err(fn(), t)
    assert err < 0.5 * svd_rel_err(t, rate), (err, svd_rel_err(t, rate))


def test_rotation_spreads_outlier_entries():
    # Rare large entries set each row's range, so plain int3 rounds the bulk to one level;
    # a random rotation spreads them over the row (heavy tails -> near Gaussian).
    t = flat_table()
    spikes = np.random.default_rng(5).random(t.shape) < 0.01
    t = np.where(spikes, 20 * t, t).astype(np.float32)
    plain = rel_err(Q.quantize(t, rate=10, rotate=False, center=False, clip=False), t)
    rot = rel_err(Q.quantize(t, rate=10, rotate=True, center=False, clip=False), t)
    assert rot < 0.7 * plain, (rot, plain)


def test_frequent_rows_get_more_bits_and_less_weighted_error():
    t, counts = flat_table(), zipf_counts()
    emb = Q.quantize(t, rate=10, allocation="frequency", counts=counts)
    bits = np.asarray(emb.bits[...])
    top, tail = np.argsort(-counts)[:20], np.argsort(counts)[:200]
    assert bits[top].mean() > bits[tail].mean() + 1
    flat = Q.quantize(t, rate=10)
    w = counts / counts.sum()

    def werr(e):
        return float(np.sum(w * np.sum((np.asarray(e.table()) - t) ** 2, 1)))
    assert werr(emb) < 0.5 * werr(flat)


def test_gptq_lowers_the_logit_error():
    # Hidden states concentrated on a few directions: GPTQ trades error into the others.
    rng = np.random.default_rng(1)
    t = flat_table()
    h = rng.standard_normal((2000, D)) * np.r_[np.full(4, 10.0), np.full(D - 4, 0.3)]
    rtn = Q.quantize(t, rate=10, hidden=h, head_weight=0.0)
    gptq = Q.quantize(t, rate=10, hidden=h, head_weight=1.0)

    def logit_err(e):
        return float(np.mean((h @ (np.asarray(e.table()) - t).T) ** 2))
    assert logit_err(gptq) < 0.8 * logit_err(rtn), (logit_err(gptq), logit_err(rtn))


def test_module_calls_agree_with_table_and_jit():
    t = flat_table()
    emb = Q.quantize(t, rate=5, allocation="frequency", counts=zipf_counts())
    tab = np.asarray(emb.table())
    ids = jnp.array([[0, 5, 511], [7, 7, 1]], jnp.int32)
    np.testing.assert_allclose(np.asarray(emb(ids)), tab[np.asarray(ids)], rtol=1e-5, atol=1e-5)
    h = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, D)), jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x: emb.attend(x))(h)),
                               np.asarray(h) @ tab.T, rtol=1e-4, atol=1e-3)
    assert emb.vocab_size == V and emb.features == D
    graphdef, state = nnx.split(emb)                     # what swap_embedding and jit do
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, state).table()), tab)
    assert emb.num_params() == V * D + 2 * V + D


def test_constant_rows_are_exact():
    t = flat_table()
    t[:3] = 0.0                          # unused tokens often have all-zero rows
    t[3] = 0.25
    emb = Q.quantize(t, rate=10, rotate=False, center=False, allocation="frequency",
                     counts=zipf_counts())
    assert np.all(np.isfinite(np.asarray(emb.table())))
    np.testing.assert_allclose(np.asarray(emb.table())[:4], t[:4], atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    t = flat_table()
    with pytest.raises(DataError):
        Q.quantize(np.full((4, 4), np.nan), rate=2)
    with pytest.raises(ConfigError):
        Q.quantize(t, rate=10, group=7)
    with pytest.raises(Q.QuantizeError):
        Q.quantize(t, rate=40)


def test_registered_methods():
    t = flat_table()
    emb = Q.quant_method(t, rate=10, rank=None)
    assert 10 <= compression_rate(emb) < 10.1           # error-driven widths spend the budget
    freq = Q.quant_freq_method(t, rate=10, allocation="frequency", counts=zipf_counts())
    assert 10 <= compression_rate(freq) < 10.1
    with pytest.raises(ConfigError):
        Q.quant_freq_method(t, rate=10)                 # calibration counts are required
    with pytest.raises(ConfigError):
        Q.quant_method(t, rate=None, rank=8)
    with pytest.raises(DataError):
        Q.quant_freq_method(t, rate=10, counts=np.ones(V - 1))
    with pytest.raises(ConfigError, match="calibration"):
        Q.quant_method(t, rate=10, calibration={"dataset": "x"})   # unresolved option: loud
    with pytest.raises(ConfigError, match="quant option floor must be a number >= 0"):
        Q.quant_method(t, rate=10, floor=-1.0)
    with pytest.raises(ConfigError, match="quant_gptq option head_weight must be"):
        Q.quant_gptq_method(t, rate=10, head_weight=True)


def test_quant_gptq_method_needs_hidden_and_lowers_logit_error():
    t, counts = flat_table(), zipf_counts()
    h = (np.random.default_rng(3).standard_normal((1000, D))
         * np.r_[np.full(4, 10.0), np.ones(D - 4)])
    with pytest.raises(ConfigError):
        Q.quant_gptq_method(t, rate=10, counts=counts)
    with pytest.raises(DataError):
        Q.quant_gptq_method(t, rate=10, counts=counts, hidden=h[:, :5])
    gptq = Q.quant_gptq_method(t, rate=10, counts=counts, hidden=h)
    freq = Q.quant_freq_method(t, rate=10, counts=counts)
    assert 10 <= compression_rate(gptq) < 10.1
    np.testing.assert_array_equal(np.asarray(gptq.bits[...]), np.asarray(freq.bits[...]))

    def logit_err(e):
        return float(np.mean((h @ (np.asarray(e.table()) - t).T) ** 2))
    assert logit_err(gptq) < 0.9 * logit_err(freq), (logit_err(gptq), logit_err(freq))


@pytest.mark.parametrize("method", ["quant", "quant_gptq"])
@pytest.mark.parametrize("group", [64, 16])
def test_rows_in_slices_give_the_whole_table_result(monkeypatch, method, group):
    """Rounding, the clip search and the width errors run QUANT_ROWS rows at a time (cache-sized
    temporaries for a 262k-row table): every slicing gives exactly the one-piece result."""
    table, counts = flat_table(3) * 0.05, zipf_counts(3)
    hidden = np.random.default_rng(4).standard_normal((256, D)).astype(np.float32)

    def run(rows):
        monkeypatch.setattr(Q, "QUANT_ROWS", rows)
        if method == "quant":
            return Q.quant_method(table, rate=5, group=group)
        return Q.quant_gptq_method(table, rate=5, group=group, counts=counts, hidden=hidden)

    whole, sliced = run(10 ** 9), run(37)   # 37: slices that do not divide V or the groups
    for name in ("codes", "bits", "scale", "offset", "mean"):
        np.testing.assert_array_equal(np.asarray(getattr(sliced, name)[...]),
                                      np.asarray(getattr(whole, name)[...]), err_msg=name)
    assert len(np.unique(np.asarray(whole.bits[...]))) > 1   # mixed widths were allocated


def test_one_lagrangian_allocation_spends_the_budget():
    """codec.allocate (bit widths here, vq's tiers too): within the budget, near it, the
    weighted error falls as the budget grows; None when the cheapest option cannot fit."""
    rng = np.random.default_rng(0)
    err = rng.gamma(1.0, 1.0, (300, 1)) * 4.0 ** -np.arange(1, 9)        # [V, 8 widths]
    cost = (D * np.arange(1, 9) + 7) // 8
    spent = []
    for budget in (300 * 10, 300 * 30, 300 * 50):
        k = C.allocate(err, cost, budget)
        assert cost[k].sum() <= budget and cost[k].sum() > budget - cost.max()
        spent.append(err[np.arange(300), k].sum())
    assert spent[0] > spent[1] > spent[2]
    assert C.allocate(err, cost, 300 * cost.min() - 1) is None
