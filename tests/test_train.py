"""Sharded AE training: 1 device == 4 devices, and a stopped + resumed run == an uninterrupted
one."""
import gc

import jax
import numpy as np
import pytest

from dirjax.compress import compress
from dirjax.compress.train import AEOptions, batch_plan, train_autoencoder


def table(v=203, d=16, r=4, seed=0):
    """A low-rank-plus-noise table; 203 rows: the last batch of 8 is partial."""
    rng = np.random.default_rng(seed)
    t = (rng.standard_normal((v, r)) @ rng.standard_normal((r, d))
         + 0.05 * rng.standard_normal((v, d)))
    return t.astype(np.float32)


def train(t, **kw):
    """((codes, weight, bias), log) of an AE run on `t`."""
    opts = AEOptions(**{"epochs": 4, "batch_size": 8, "progress": False, **kw})
    *arrays, log = train_autoencoder(t, 3, opts)
    return tuple(arrays), log


def test_there_are_four_devices():
    assert len(jax.devices()) == 4


def test_batch_plan_covers_every_row_once_and_masks_the_tail():
    ids, live = batch_plan(203, 8, jax.random.PRNGKey(0))
    assert ids.shape == live.shape == (26, 8)
    ids, live = np.asarray(ids).ravel(), np.asarray(live).ravel()
    assert sorted(ids[live == 1]) == list(range(203)) and live.sum() == 203
    assert (live[:203] == 1).all()  # the padding sits in the last batch only


def test_one_device_equals_four_devices():
    t = table()
    (c1, w1, b1), o1 = train(t, devices=jax.devices()[:1])
    (c4, w4, b4), o4 = train(t, devices=jax.devices())
    np.testing.assert_allclose(c1, c4, atol=1e-5)
    np.testing.assert_allclose(w1, w4, atol=1e-5)
    np.testing.assert_allclose(b1, b4, atol=1e-5)
    assert [r["loss"] for r in o1] == pytest.approx([r["loss"] for r in o4], rel=1e-5)


def test_training_lowers_the_loss_and_learns_directions():
    t = table(r=3)  # rank 3 plus noise: a rank-3 code can get every direction nearly right
    (codes, w, b), log = train(t, epochs=8, lr=1e-2, lr_decay_every=100)
    losses = [r["loss"] for r in log]
    assert losses[-1] < 0.5 * losses[0]
    recon = codes @ w + b
    cos = np.sum(recon * t, 1) / np.linalg.norm(recon, axis=1) / np.linalg.norm(t, axis=1)
    assert cos.mean() > 0.95


def test_stopped_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    t = table()
    (c_full, w_full, _), full = train(t, devices=jax.devices())
    (_, _, _), first = train(t, workdir=str(tmp_path), stop_after_epochs=2)
    assert len(first) == 2
    assert (tmp_path / "checkpoints").is_dir()
    (c_res, w_res, _), second = train(t, workdir=str(tmp_path))
    # resumed: epochs 1-2 not redone (no timing) but their log travelled in the checkpoint
    assert [r["epoch"] for r in second] == [1, 2, 3, 4]
    assert [("seconds" in r) for r in second] == [False, False, True, True]
    assert [r["loss"] for r in second] == pytest.approx([r["loss"] for r in full], rel=1e-5)
    np.testing.assert_allclose(c_res, c_full, atol=1e-6)
    np.testing.assert_allclose(w_res, w_full, atol=1e-6)


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    t = table()
    (c_full, _, _), _ = train(t)
    train(t, workdir=str(tmp_path), stop_after_epochs=3)
    latest = tmp_path / "checkpoints" / "3"
    for f in latest.rglob("*"):           # a kill or a full disk: every file cut short
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        (c_res, _, _), log = train(t, workdir=str(tmp_path))
    assert [("seconds" in r) for r in log] == [False, False, True, True]   # resumed after 2
    np.testing.assert_allclose(c_res, c_full, atol=1e-6)


def test_compress_ae_end_to_end_with_svd_init():
    t = table()
    svd = compress(t, rank=3, method="svd")
    emb = compress(t, rank=3, method="ae", init="svd", epochs=2, batch_size=8, progress=False,
                   lr=1e-4)
    assert emb.method == "ae" and emb.codes.shape == (203, 3)
    # started at the SVD optimum, a few small steps keep it close to it
    assert emb.metrics["cos_mean"] > svd.metrics["cos_mean"] - 0.01


# The checkpoint's shapes are checked before any restore: a failed restore would leave Orbax's
# reads running, to print tracebacks later (collected here, they fail this test)
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_workdir_of_another_run_is_a_config_error(tmp_path):
    from dirjax.errors import ConfigError
    train(table(), workdir=str(tmp_path), epochs=1)
    with pytest.raises(ConfigError, match="another run"):
        train_autoencoder(table(), 2, AEOptions(epochs=2, batch_size=8, progress=False,
                                                workdir=str(tmp_path)))
    gc.collect()


def test_permutation_is_a_uniform_shuffle():
    """Every id once; each position's value uniform over ids (chi-square over 2000 draws);
    different keys give different orders."""
    from dirjax.compress.train import permutation
    perms = np.asarray(jax.vmap(lambda k: permutation(k, 10))(
        jax.random.split(jax.random.PRNGKey(0), 2000)))
    assert (np.sort(perms, axis=1) == np.arange(10)).all()
    counts = np.stack([np.bincount(perms[:, j], minlength=10) for j in range(10)])  # [pos, id]
    chi2 = ((counts - 200.0) ** 2 / 200.0).sum()
    assert chi2 < 150  # 81 degrees of freedom: p(chi2 > 150) < 1e-5
    assert len({tuple(p) for p in perms}) > 1990


def test_permutation_pairs_and_neighbours_are_uniform():
    """The hash-keyed shuffle has no visible structure: the ordered pair (first, second) is
    uniform over the 90 pairs of 10 ids, and, for 1000 rows, where neighbouring ids land is
    uncorrelated."""
    from dirjax.compress.train import permutation
    keys = jax.random.split(jax.random.PRNGKey(1), 9000)
    perms = np.asarray(jax.vmap(lambda k: permutation(k, 10))(keys))
    counts = np.zeros((10, 10))
    np.add.at(counts, (perms[:, 0], perms[:, 1]), 1)
    off = counts[~np.eye(10, dtype=bool)]
    assert ((off - 100.0) ** 2 / 100.0).sum() < 150  # 89 dof: p(chi2 > 150) < 1e-4
    pos = np.argsort(np.asarray(jax.vmap(lambda k: permutation(k, 1000))(keys[:200])), axis=1)
    corr = np.array([np.corrcoef(p[:-1], p[1:])[0, 1] for p in pos])
    assert np.abs(corr).max() < 0.15 and abs(corr.mean()) < 0.01  # sd 0.032 and 0.0022
