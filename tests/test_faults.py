"""Fault injection: run.py killed (SIGKILL) at random moments across compression, evaluation and
saving, each kill followed by a rerun on the same work directory. Every final results.json
equals an uninterrupted run's, results.json is absent or valid after every kill, no temporary
folder or file is left, and no rerun reuses a stale compression.

    .venv/bin/python -m pytest -m slow tests/test_faults.py     (~5 min on 2 cores)
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
