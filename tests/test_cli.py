"""run.py as a user runs it: one clear error line and exit 1 on mistakes, no partial results."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
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
    (["--config.dtype=evil"], ["config.dtype", "evil"]),
    (["--config.dtype=123"], ["config.dtype", "123"]),
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
    table = " ".join(t for t in proc.stdout.split(" ") if t)   # the padded cells, one space
    assert "| uncompressed | - | 1 | 1.00 |" in table and "| svd | tied | 4 |" in table
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


@pytest.mark.parametrize("spec", ["smollm2_wikitext", "configs/smollm2_wikitext.py"])
def test_a_shipped_config_by_name_outside_the_checkout(tmp_path, run_here, spec):
    """A pip user has no configs/ folder: the name, or the checkout's spelling of the path,
    finds the packaged file (here it gets as far as the missing data: the config loaded)."""
    proc = run_here("--config", spec, f"--config.model={TINY}", f"--config.data_dir={tmp_path}",
                    "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert_one_line_error(proc, "missing data file", "wikitext-2-raw/test.txt")


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, run_here):
    proc = run_here("--config", "quality_swep", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert_one_line_error(proc, "no config named 'quality_swep'", "quality_sweep", "default")
    assert not (tmp_path / "w").exists()


def dirjax_command(capsys, *args):
    """`dirjax ARGS` (dirjax.cli.main, the console script's function) in this process."""
    from dirjax import cli
    capsys.readouterr()
    try:
        cli.main(["dirjax", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_the_dirjax_command_lists_and_shows_configs(capsys):
    import dirjax
    proc = dirjax_command(capsys, "--version")
    assert proc.returncode == 0 and proc.stdout == f"dirjax {dirjax.__version__}\n"
    proc = dirjax_command(capsys, "configs")
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:-1]]
    # ":ARG" where get_config takes a parameter (quality_sweep, llamacpp_rates)
    takes = {p.stem for p in (ROOT / "configs").glob("*.py")
             if re.search(r"def get_config\(\s*\w", p.read_text())}
    assert {"quality_sweep", "llamacpp_rates"} <= takes
    assert names == sorted(p.stem + (":ARG" if p.stem in takes else "")
                           for p in (ROOT / "configs").glob("*.py"))
    # a config's own commands as a pip user types them
    proc = dirjax_command(capsys, "configs", "quality_sweep")
    assert "dirjax run --config quality_sweep:smollm2-low " in proc.stdout
    doc, file = proc.stdout.rstrip().rsplit("\n", 1)
    assert "run.py" not in doc and "configs/quality_sweep.py" not in doc
    assert file == f"file: {ROOT / 'dirjax' / 'configs' / 'quality_sweep.py'}"
    proc = dirjax_command(capsys, "run", "--help")
    assert proc.returncode == 0 and "dirjax run [--config configs/X.py]" in proc.stdout


@pytest.mark.parametrize("args,words", [
    (["--config", "default"], ["unknown command '--config'", "dirjax run --config default"]),
    (["compress"], ["unknown command 'compress'", "run, configs"]),
    (["configs", "nope"], ["no shipped config 'nope'", "quality_sweep"]),
])
def test_the_dirjax_command_refuses_in_one_line(capsys, args, words):
    assert_one_line_error(dirjax_command(capsys, *args), *words)


def test_ctrl_c_mid_run_is_one_line_and_exit_130(tmp_path):
    """SIGINT (Ctrl-C) once the first row is written: no traceback, one line saying how to
    resume, exit status 130; results.json keeps the finished row."""
    import re
    import signal
    import time

    workdir = tmp_path / "w"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), f"--config.model={TINY}", "--config.max_tokens=128",
         "--config.max_length=64", "--config.methods=('svd', 'ae')", "--config.rates=(4,)",
         "--config.method_options.ae.epochs=100000", "--workdir", str(workdir)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (workdir / "results.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no row written in 240 s"
        time.sleep(0.2)
    time.sleep(1.0)                          # into the next row's compression
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # what is left once the progress bars' lines (tqdm: `|...| n/N [...]`, cursor moves) go
    ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    lines = [line for line in ansi.sub("", err).replace("\r", "\n").splitlines()
             if line.strip() and not re.search(r"\|.*\d+/\d+ \[", line)]
    assert lines == [f"interrupted: rerun the same command to resume (finished rows are kept "
                     f"in {workdir / 'results.json'})"], err
    rows = json.loads((workdir / "results.json").read_text())
    assert [r["method"] for r in rows][:1] == ["original"]


def test_ctrl_c_lost_in_a_finalizer_is_delivered_again(tmp_path, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside `__del__` or a gc callback (JAX has
    one), printing "Exception ignored in ...": during a run it comes again, silently."""
    import signal
    import time

    from dirjax import cli

    class Finalised:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)      # its KeyboardInterrupt cannot leave here

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)    # what Python would print
    restore = cli.catch_ctrl_c(str(tmp_path))
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            Finalised()
            time.sleep(2.0)
        assert time.monotonic() - t0 < 1.0          # delivered again at once, not after 2 s
    finally:
        restore()                                   # (and the watchdog is called off)
    assert printed == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook == printed.append
