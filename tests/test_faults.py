"""Fault injection (SIGKILL at random moments), each kill followed by a check and a rerun:
  - run.py across compression, evaluation and saving: every final results.json equals an
    uninterrupted run's, results.json is absent or valid after every kill, no temporary folder
    or file is left, and no rerun reuses a stale compression;
  - save_model saving to one folder over and over (and in the window where the new folder has
    the name and the old one is not yet removed): the folder is always a whole saved model;
  - the chunked alias's assembly into the cache: no file or the whole verified one.

    .venv/bin/python -m pytest -m slow tests/test_faults.py     (~8 min on 2 cores)
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny-llama")
ARGS = [f"--config.model={TINY}", "--config.max_tokens=256", "--config.max_length=64",
        "--config.batch_size=2", "--config.rates=(4.0, 8.0)",
        "--config.methods=('svd', 'ae', 'quant')", "--config.method_options.ae.epochs=8",
        "--config.method_options.ae.batch_size=16", "--config.progress=False"]
# fields that say how a row was obtained, not what it is
HOW = ("seconds", "compress_seconds", "reused", "cached", "embedding_dir")


def start(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *ARGS, "--workdir",
                             str(workdir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def what(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in HOW} for r in rows]


def leftovers(workdir: Path) -> list[str]:
    """Temporary files and folders a finished run must not leave behind."""
    bad = [p for p in workdir.rglob("*") if ".tmp" in p.name or p.name.endswith(".train")
           or ".old-" in p.name or ".bad-" in p.name]
    emb = workdir / "embeddings"
    bad += [p for p in emb.iterdir() if p.name.startswith(".")] if emb.is_dir() else []
    return sorted(str(p.relative_to(workdir)) for p in bad)


@pytest.mark.slow
def test_runs_killed_at_random_moments_end_like_an_uninterrupted_one(tmp_path):
    ref_dir = tmp_path / "reference"
    t0 = time.monotonic()
    proc = start(ref_dir)
    assert proc.wait(timeout=900) == 0, proc.stderr.read()
    full = time.monotonic() - t0
    reference = json.loads((ref_dir / "results.json").read_text())
    assert len(reference) == 1 + 3 * 2 * 2

    # the kills are drawn within a warm run's time: the first run filled the session's
    # compilation cache, and later runs are several times faster than it
    t0 = time.monotonic()
    proc = start(tmp_path / "warm")
    assert proc.wait(timeout=900) == 0, proc.stderr.read()
    full = time.monotonic() - t0
    assert what(json.loads((tmp_path / "warm" / "results.json").read_text())) == what(reference)

    rng = random.Random(0)
    kills, episodes = 0, 0
    # episodes: a fresh work directory, killed up to 3 times, then run to the end and compared
    # (a finished directory only reuses rows, so later kills there would test nothing)
    while kills < 10 and episodes < 20:
        episodes += 1
        work = tmp_path / f"work{episodes}"
        for _ in range(3):
            proc = start(work)
            time.sleep(rng.uniform(0.2, 0.9 * full))
            if proc.poll() is not None:        # finished before the kill: the episode is over
                assert proc.returncode == 0, proc.stderr.read()
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            results = work / "results.json"
            if results.exists():               # absent or valid after every kill
                json.loads(results.read_text())
        else:
            proc = start(work)
            assert proc.wait(timeout=900) == 0, proc.stderr.read()
        final = json.loads((work / "results.json").read_text())
        assert what(final) == what(reference)
        assert leftovers(work) == []
        # every compression on disk is one the final rows name: no stale or duplicate entries
        named = {Path(r["embedding_dir"]).name for r in final if r["embedding_dir"]}
        assert {p.name for p in (work / "embeddings").iterdir()} == named
    assert kills >= 10


# ----------------------------------------------------------------------------- save_model

SAVER = r"""
import os, sys
from pathlib import Path
import numpy as np
import dirjax
from dirjax import save_model, swap_embedding
from dirjax.compress import compress
from test_faults import batch_logits

source, target, refs = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
model, _ = dirjax.load_model(source)
table = np.asarray(model.embedding.table(), np.float32)
small = [swap_embedding(model, compress(table, rate=r, method="quant"), "tied") for r in (4, 8)]
for i, m in enumerate(small):     # what each saved model computes, before any kill
    if not (refs / f"{i}.npy").exists():
        save_model(m, refs / str(i))
        np.save(refs / f"{i}.tmp.npy", batch_logits(m))
        os.replace(refs / f"{i}.tmp.npy", refs / f"{i}.npy")
save_model(small[0], target)
print("ready", flush=True)
i = 1
while True:                       # old and new differ at every save
    save_model(small[i % 2], target)
    i += 1
"""


def batch_logits(model):
    """The logits of `model` on the golden llama batch, jitted the same way in every process."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    golden = np.load(ROOT / "tests" / "fixtures" / "golden_llama.npz")
    out = nnx.jit(lambda m, ids, mask: m(ids, mask))(model, jnp.asarray(golden["ids"]),
                                                        jnp.asarray(golden["mask"]))
    return np.asarray(out)


def wait_ready(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the child prints its `ready` line (it has set up and starts its loop)."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
    proc.kill()
    raise AssertionError(f"the child did not get ready: {proc.stderr.read()}")


def hidden(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.slow
def test_save_model_killed_at_random_moments_leaves_old_or_new(tmp_path):
    """A child saves two different compressed models in turn to one folder, pausing 50 ms in
    replace_dir's window (the new folder has the name, the old one is not yet removed:
    $DIRJAX_TEST_REPLACE_PAUSE); SIGKILL at random moments. After each kill the folder is one
    of the two saved models, whole (it loads, with that model's logits); the next save_model
    leaves no `.NAME.tmp-*` / `.NAME.old-*` behind."""
    import numpy as np

    import dirjax

    refs, out = tmp_path / "refs", tmp_path / "out"
    refs.mkdir()
    out.mkdir()
    target = out / "model"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DIRJAX_TEST_REPLACE_PAUSE": "0.05",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    rng = random.Random(1)
    expected, window, kills = None, 0, 0
    for episode in range(8):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, TINY, str(target), str(refs)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.6))
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if expected is None:
            expected = [np.load(refs / f"{i}.npy") for i in range(2)]
            assert not np.array_equal(*expected)       # old and new are told apart
            sizes = [json.loads((refs / str(i) / "dirjax_model.json").read_text())["storage_bytes"]
                     for i in range(2)]
            assert sizes[0] != sizes[1]
        left = hidden(out, "model")
        # a kill in the window leaves the old folder in a dead writer's temporary
        window += any(".tmp-" in n and (out / n / "dirjax_model.json").exists() for n in left)
        assert all(".tmp-" in n or ".old-" in n for n in left), left
        model, _ = dirjax.load_model(target)
        which = sizes.index(json.loads((target / "dirjax_model.json").read_text())["storage_bytes"])
        np.testing.assert_array_equal(batch_logits(model), expected[which])
        # the next call cleans up the dead writer's leftovers
        dirjax.save_model(dirjax.load_model(refs / str(1 - which))[0], target)
        assert hidden(out, "model") == [] and sorted(p.name for p in out.iterdir()) == ["model"]
        np.testing.assert_array_equal(batch_logits(dirjax.load_model(target)[0]),
                                      expected[1 - which])
    print(f"save_model: {window} of {kills} kills in the replace window")
    assert kills == 8 and window >= 1, f"{window} of {kills} kills in the replace window"


# ----------------------------------------------------------------------------- alias assembly

ASSEMBLER = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from dirjax import models
models.ALIASES["fake"] = ("fake_big_chunked", "tiny.gguf", "fake-big-chunked==1")
models.CHUNKED = models.CHUNKED | {"fake"}
target = Path(os.environ["DIRJAX_CACHE"]) / "tiny.gguf"
print("ready", flush=True)
while True:
    target.unlink(missing_ok=True)
    models.resolve_alias("fake")      # joins the chunks
    for _ in range(3):
        models.resolve_alias("fake")  # verifies the cached file
"""


@pytest.mark.slow
def test_alias_assembly_killed_at_random_moments(tmp_path, monkeypatch):
    """A child assembles a 48 MB chunked alias over and over (removing the cached file between
    rounds), SIGKILLed at random moments. After each kill the cache holds no file or the whole
    verified one (plus the dead writer's temporary); the next call ends with the right file
    and nothing else."""
    import hashlib

    from test_cache_verify import make_package

    from dirjax import models

    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(2).randbytes(48 << 20))
    site = tmp_path / "site"
    data = make_package(site, blob, name="fake_big_chunked")
    want = hashlib.sha256(data).hexdigest()
    blob.unlink()
    cache = tmp_path / "cache"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(models.ALIASES, "fake", ("fake_big_chunked", "tiny.gguf", "x==1"))
    monkeypatch.setattr(models, "CHUNKED", models.CHUNKED | {"fake"})
    monkeypatch.setenv("DIRJAX_CACHE", str(cache))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    rng = random.Random(3)
    partial, whole = 0, 0
    for episode in range(10):
        proc = subprocess.Popen([sys.executable, "-c", ASSEMBLER, str(site)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 1.5))
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
        temporaries = [n for n in names if n.startswith(".tiny.gguf.tmp-")]
        assert set(names) - set(temporaries) <= {"tiny.gguf"}, names
        partial += bool(temporaries)
        if "tiny.gguf" in names:
            whole += 1
            assert hashlib.sha256((cache / "tiny.gguf").read_bytes()).hexdigest() == want
        path = models.resolve_alias("fake")
        assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == want
    sys.modules.pop("fake_big_chunked", None)
    print(f"assembly: of 10 kills, {partial} left a partial file, {whole} a whole one")
    assert partial >= 1 and whole >= 1, f"kills: {partial} mid-write, {whole} with a whole file"
