"""run.py as a user runs it: one clear error line and exit 1 on mistakes, no partial results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny-llama")


def run(*args, cwd):
    """run.py in its own process, as a user starts it."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(("DIRJAX_DATA_DIR"), None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,words", [
    (["--config.rate=5"], ["unknown config field", "rate"]),
    (["--config.max_tokens=abc"], ["max_tokens", "abc"]),
    (["--config", "configs/no_such.py"], ["No such file", "no_such.py"]),
    (["--config.task=translate"], ["config.task", "translate"]),
    (["--no_such_flag"], ["no_such_flag"]),
    (["--config.dtype=int8"], ["config.dtype", "int8"]),
    (["--config.method_options.ae.epoch=3"], ["unknown option", "epoch"]),
])
def test_bad_command_line_is_one_clear_line(tmp_path, run_here, args, words):
    proc = run_here(*args, "--workdir", str(tmp_path / "w"), cwd=ROOT)
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "w").exists()


def test_missing_data_file_is_one_clear_line(tmp_path, run_here):
    proc = run_here("--config", "configs/smollm2_wikitext.py", f"--config.model={TINY}",
               f"--config.data_dir={tmp_path}", "--workdir", str(tmp_path / "w"), cwd=ROOT)
    assert_one_line_error(proc, "missing data file", "wikitext-2-raw/test.txt")
    assert not (tmp_path / "w" / "results.json").exists()


def test_unknown_model_is_one_clear_line(tmp_path):
    """(in its own process: the exit status a shell sees)"""
    proc = run("--config.model=./no/such/model", "--workdir", str(tmp_path / "w"), cwd=ROOT)
    assert_one_line_error(proc, "no such file or directory")
    assert not (tmp_path / "w" / "results.json").exists()


def test_tiny_run_prints_the_table_and_writes_results(tmp_path):
    proc = run(f"--config.model={TINY}", "--config.max_tokens=128", "--config.max_length=64",
               "--config.methods=('svd',)", "--config.rates=(4,)", "--config.outputs=('tied',)",
               "--config.progress=False", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| original |" in proc.stdout and "| svd | tied | 4 | 14 |" in proc.stdout
    assert "PyTorch was not found" not in proc.stderr + proc.stdout    # no stray library noise
    workdir = tmp_path / "runs" / "default"                  # runs/<config name> by default
    rows = json.loads((workdir / "results.json").read_text())
    assert [r["method"] for r in rows] == ["original", "svd"]
    assert (workdir / "plot.png").exists() and (workdir / "results.md").exists()


def test_a_config_given_without_the_flag_is_refused(tmp_path, run_here):
    proc = run_here("configs/minilm_sts.py", "--workdir", str(tmp_path / "w"), cwd=ROOT)
    assert_one_line_error(proc, "unexpected argument", "--config configs/minilm_sts.py")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage(run_here, flag):
    proc = run_here(flag, cwd=ROOT)
    assert proc.returncode == 0 and "python run.py [--config configs/X.py]" in proc.stdout
    assert proc.stderr == ""


def test_a_busy_workdir_is_one_clear_line(tmp_path, run_here):
    from dirjax.experiment import WorkdirLock
    with WorkdirLock(tmp_path / "w"):
        proc = run_here(f"--config.model={TINY}", "--workdir", str(tmp_path / "w"), cwd=ROOT)
    assert_one_line_error(proc, "in use by another run")
