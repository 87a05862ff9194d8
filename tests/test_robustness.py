"""Never a silently wrong result: caches that see the weights, results that only grow, one-line
errors before any work, a locked work directory (tiny checkpoints, in-process)."""
import errno
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from dirjax import experiment, report
from dirjax.config import base_config
from dirjax.errors import ConfigError, DirjaxError, WeightsError
from dirjax.experiment import WorkdirLock, run_experiment

FIXTURES = Path(__file__).parent / "fixtures"


def tiny(**over):
    c = base_config()
    c.update(model=str(FIXTURES / "tiny-llama"), max_tokens=128, max_length=64, batch_size=2,
             rates=(4.0,), methods=("svd",), outputs=("tied",), progress=False)
    c.update(over)
    return c


def values(rows):
    return [(r["method"], r.get("output"), r["value"]) for r in rows]


def no_model_load(monkeypatch):
    """Fail the test if anything tries to load a model (errors must come before)."""
    import dirjax.models
    monkeypatch.setattr(dirjax.models, "load_model",
                        lambda *a, **k: pytest.fail("a model was loaded before the error"))


# ---------------------------------------------------------------- 1. caches see the weights

def test_changed_weights_are_not_served_from_the_cache(tmp_path):
    from safetensors.numpy import load_file, save_file
    model_dir = tmp_path / "model"
    shutil.copytree(FIXTURES / "tiny-llama", model_dir)
    work = tmp_path / "work"
    first = run_experiment(tiny(model=str(model_dir)), work)
    # the same path, the same shapes, other weights (a re-trained or re-downloaded checkpoint)
    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(k for k in weights if "embed_tokens" in k)
    weights[name] = weights[name] * 1.5
    save_file(weights, str(model_dir / "model.safetensors"))
    second = run_experiment(tiny(model=str(model_dir)), work)
    assert not any(r.get("cached") or r["reused"] for r in second)
    assert second[1]["embedding_dir"] != first[1]["embedding_dir"]
    assert second[1]["value"] != first[1]["value"] and second[0]["value"] != first[0]["value"]
    fresh = run_experiment(tiny(model=str(model_dir)), tmp_path / "fresh")
    assert values(second) == values(fresh)
    saved = json.loads((work / "results.json").read_text())
    assert len(saved) == 4        # both runs' rows: the file only grows


# ---------------------------------------------------------------- 2. tokenizers

@pytest.mark.parametrize("fixture", ["tiny-bert", "tiny-gpt2"])
def test_a_checkpoint_without_tokenizer_files_is_refused(tmp_path, fixture):
    from dirjax import load_model
    bare = tmp_path / fixture
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / fixture / f, bare / f)
    with pytest.raises(WeightsError, match="no tokenizer files") as info:
        load_model(bare)
    assert "\n" not in str(info.value)
    # or the user names one: the tokenizer of the complete fixture
    model, tok = load_model(bare, tokenizer=FIXTURES / fixture)
    _, want = load_model(FIXTURES / fixture)
    assert tok("a few words")["input_ids"] == want("a few words")["input_ids"]
    assert model.config.vocab_size == 1000


# ---------------------------------------------------------------- 3. finished rows are kept

def test_a_failed_rerun_keeps_every_finished_row(tmp_path, monkeypatch):
    work = tmp_path / "work"
    rows = run_experiment(tiny(methods=("svd", "quant")), work)
    before = (work / "results.json").read_bytes()

    # a typo in an option: found before any work, nothing rewritten
    bad = tiny(methods=("svd", "quant", "ae"))
    bad.method_options = {"ae": {"epoch": 3}}
    no_model_load(monkeypatch)
    with pytest.raises(ConfigError, match="epoch"):
        run_experiment(bad, work)
    bad.method_options = {"svd": {"n_iters": 3}}
    with pytest.raises(ConfigError, match="n_iters"):
        run_experiment(bad, work)
    assert (work / "results.json").read_bytes() == before
    monkeypatch.undo()

    # a compression that fails half-way through a longer sweep
    from dirjax import compress as C
    broken = C.Method(lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")), low_rank=True,
                      module=C.CompressedEmbedding)
    monkeypatch.setitem(C.METHODS, "ae", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(tiny(methods=("svd", "quant", "ae")), work)
    monkeypatch.undo()
    kept = json.loads((work / "results.json").read_text())
    assert [r["key"] for r in kept] == [r["key"] for r in rows]

    # a full disk while writing the results: one line, the old file intact
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(report, "atomic_write", full)
    with pytest.raises(DirjaxError, match="No space left on device"):
        run_experiment(tiny(methods=("svd", "quant"), max_tokens=100), work)
    monkeypatch.undo()
    assert (work / "results.json").read_bytes() == before


def test_a_full_disk_while_saving_a_compression_is_one_line(tmp_path, monkeypatch):
    from dirjax.compress import store

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store, "save_compressed", full)
    with pytest.raises(DirjaxError, match="cannot save the compression.*No space left") as info:
        run_experiment(tiny(), tmp_path / "work")
    assert "\n" not in str(info.value)
    rows = json.loads((tmp_path / "work" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["original"]       # what finished is kept


def test_a_damaged_saved_compression_is_made_again(tmp_path):
    work = tmp_path / "work"
    first = run_experiment(tiny(), work)
    saved = Path(first[1]["embedding_dir"])
    for f in (saved / "arrays").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_experiment(tiny(max_tokens=100), work)
    assert any("set aside" in str(w.message) for w in caught)
    assert not again[1]["reused"] and again[1]["embedding_dir"] == first[1]["embedding_dir"]
    assert not [p for p in (work / "embeddings").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- 5. errors before any work

def test_a_workdir_that_is_a_file_fails_before_the_model_loads(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "w").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        run_experiment(tiny(), tmp_path / "w")
    with pytest.raises(ConfigError, match="is a file"):
        run_experiment(tiny(), tmp_path / "w" / "below")


def test_a_workdir_that_is_not_writable_fails_before_the_model_loads(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    # (root may write anywhere, so the permission itself is simulated)
    monkeypatch.setattr(experiment.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="not writable"):
        run_experiment(tiny(), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_unknown_methods_and_options_fail_before_the_model_loads(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        run_experiment(tiny(methods=("svd", "magic")), tmp_path / "w")
    c = tiny()
    c.method_options = {"svd": {"exact": "yes"}}
    with pytest.raises(ConfigError, match="exact"):
        run_experiment(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- 6. one run per workdir

def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
    work = tmp_path / "work"
    with WorkdirLock(work):
        with pytest.raises(ConfigError, match="in use by another run"):
            run_experiment(tiny(), work)
    assert not (work / "results.json").exists() and not (work / "embeddings").exists()
    rows = run_experiment(tiny(), work)        # free again: the run goes ahead
    assert len(rows) == 2


# ---------------------------------------------------------------- 7. smaller ones

def test_interrupted_saves_leave_no_hidden_folders(tmp_path):
    work = tmp_path / "work"
    run_experiment(tiny(), work)
    orphan = work / "embeddings" / ".svd-rate4-abc.x1y2"     # a save killed half-way
    (orphan / "arrays").mkdir(parents=True)
    run_experiment(tiny(max_tokens=100), work)
    assert not orphan.exists()


def test_results_files_get_ordinary_permissions(tmp_path):
    import os
    run_experiment(tiny(), tmp_path / "work")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("results.json", "results.md", "plot.png"):
        assert (tmp_path / "work" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_the_ae_log_survives_a_kill_between_checkpoint_and_save(tmp_path):
    from dirjax.compress import compress
    t = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    opts = dict(rank=2, method="ae", batch_size=8, progress=False, workdir=str(tmp_path))
    compress(t, **opts, epochs=3, stop_after_epochs=3)     # killed after the last checkpoint
    emb = compress(t, **opts, epochs=3)                    # the rerun restores epoch 3
    assert emb.meta["epochs_run"] == 3 and emb.meta["final_loss"] is not None


@pytest.mark.parametrize("kw,err,match", [
    ({"rate": 0.5, "method": "quant"}, ConfigError, "> 1"),
    ({"rate": "4", "method": "svd"}, ConfigError, "finite number"),
    ({"rate": float("nan"), "method": "svd"}, ConfigError, "finite number"),
    ({"rank": 2, "method": "quant"}, ConfigError, "takes a rate"),
])
def test_compress_api_refuses_bad_rates_in_one_line(kw, err, match):
    from dirjax.compress import compress
    t = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    with pytest.raises(err, match=match) as info:
        compress(t, **kw)
    assert "\n" not in str(info.value)


def test_compress_api_takes_numpy_numbers_and_refuses_overflowing_tables():
    from dirjax.compress import compress
    from dirjax.errors import DataError
    t = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    assert compress(t, rank=np.int64(4), method="svd").rank == 4
    assert compress(t, rate=np.float32(4.0), method="svd").rank == 1
    with pytest.raises(DataError, match="overflow"):
        compress(t * np.float32(1e30), rank=2, method="svd")
