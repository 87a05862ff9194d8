"""The quantisers' saved outputs, pinned bit for bit (tests/fixtures/quant_pins.npz).

Each case compresses one fixed random table `[700, 48]` (with calibration counts `[V]` and
hidden states `[N, d]`) and compares every array of `export()`, its static fields and
`storage_bytes()` with the fixture, so a refactor of quantize.py / vq.py / codec.py /
kmeans.py that changes one code, one scale or one byte of the packed format fails here.
The fixture was written by the code before the codec refactor (issue 27), under the test
suite's XLA flags (tests/conftest.py); rewrite it only for an intended change of output:

    .venv/bin/python tests/test_quant_pins.py      # writes tests/fixtures/quant_pins.npz
"""
import json
from pathlib import Path

import numpy as np
import pytest

from dirjax.compress import quantize as Q
from dirjax.compress import vq as VQ

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "quant_pins.npz"
V, D, N = 700, 48, 300
TIERS = ((16, 4), (8, 4), (4, 4))          # small codebooks: rate 32 fits a 700-row table
FAST = dict(tiers=TIERS, iters=4, refit_iters=2, refine_steps=3)


def inputs():
    """(table [V, D] with a mean row, spread norms and a few large entries, counts [V],
    hidden [N, D] with a few dominant directions)."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((V, D)) * np.exp(rng.uniform(0, np.log(4), (V, 1)))
    t += 0.5 * rng.standard_normal(D)
    t[rng.integers(0, V, 20), rng.integers(0, D, 20)] *= 8
    counts = rng.permutation(1e4 / np.arange(1, V + 1) ** 1.1).round()
    hidden = rng.standard_normal((N, D)) * np.r_[np.full(3, 6.0), np.ones(D - 3)]
    return t.astype(np.float32), counts, hidden.astype(np.float32)


def cases():
    """name -> a function () -> embedding module."""
    t, c, h = inputs()
    return {
        "quant_r4": lambda: Q.quant_method(t, rate=4),
        "quant_r10_noclip": lambda: Q.quant_method(t, rate=10, clip=False, center=False,
                                                   group=24),
        "quant_uniform_g16": lambda: Q.quantize(t, rate=5, group=16, rotate=False),
        "quant_freq_r10": lambda: Q.quant_freq_method(t, rate=10, counts=c, floor=0.5),
        "quant_gptq_r4": lambda: Q.quant_gptq_method(t, rate=4, counts=c, hidden=h),
        "quant_gptq_r10": lambda: Q.quant_gptq_method(t, rate=10, counts=c, hidden=h,
                                                      group=16, head_weight=0.8),
        "vq_r16": lambda: VQ.vq_method(t, rate=16, counts=c, hidden=h, **FAST),
        "vq_r32": lambda: VQ.vq_method(t, rate=32, counts=c, hidden=h, **FAST),
        "vq_r16_fp16_hls": lambda: VQ.vq_method(t, rate=16, counts=c, hidden=h, norm="fp16",
                                                gain="hls", weighted=True, prob_weight=0.5,
                                                ldlq_rounds=3, **FAST),
        "vq_r16_none": lambda: VQ.vq_method(t, rate=16, counts=c, norm="none", **FAST),
        "vq_r16_one_tier": lambda: VQ.vq_method(t, rate=16, tiers=((8, 4),), gain="ls",
                                                center=False, rotate=False, iters=4,
                                                refit_iters=0, seed=3),
    }


def outputs(name: str, emb) -> dict:
    """Every exported array, the static fields (JSON) and storage_bytes, keyed by case."""
    arrays, static = emb.export()
    out = {f"{name}.{k}": np.asarray(v) for k, v in arrays.items()}
    out[f"{name}:static"] = np.array(json.dumps(static, sort_keys=True))
    out[f"{name}:bytes"] = np.array(emb.storage_bytes(), np.int64)
    return out


@pytest.fixture(scope="module")
def pinned():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def pinned_of(name: str, pinned: dict) -> dict:
    return {k: v for k, v in pinned.items() if k.split(".")[0].split(":")[0] == name}


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert np.array_equal(got[k], v), k


@pytest.mark.parametrize("name", list(cases()))
def test_outputs_are_the_pinned_ones(name, pinned):
    assert_same(outputs(name, cases()[name]()), pinned_of(name, pinned))


@pytest.mark.parametrize("name", list(cases()))
def test_what_was_saved_restores_and_saves_the_same(name, pinned):
    """The arrays and static fields saved before the refactor (what cached embeddings in work
    directories hold) restore, and export again byte for byte."""
    want = pinned_of(name, pinned)
    arrays = {k.split(".", 1)[1]: v for k, v in want.items() if "." in k}
    static = json.loads(str(want[f"{name}:static"]))
    cls = VQ.VQEmbedding if name.startswith("vq") else Q.QuantizedEmbedding
    assert_same(outputs(name, cls.restore(arrays, static, method=name)), want)


if __name__ == "__main__":
    import conftest  # noqa: F401  (the suite's XLA flags, set before jax computes anything)
    everything = {}
    for name, make in cases().items():
        everything.update(outputs(name, make()))
    np.savez_compressed(FIXTURE, **everything)
    print(f"{FIXTURE}: {len(everything)} arrays, {FIXTURE.stat().st_size} bytes")
