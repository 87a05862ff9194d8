"""dirjax as a pip user gets it: the wheel built from this checkout, installed in a fresh virtual
environment, run from a folder outside the checkout (the `dirjax` command, `python -m dirjax`, a
shipped config by name); and the process setup that `import dirjax` does for every entry."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny-llama")
# test_cli.py's tiny job: what keeps a run of the default config to seconds
TINY_RUN = [f"--config.model={TINY}", "--config.max_tokens=128", "--config.max_length=64",
            "--config.methods=('svd',)", "--config.rates=(4,)", "--config.outputs=('tied',)",
            "--config.progress=False"]


def env(**changes):
    """This session's environment (its compile cache, CPU flags, offline Hub) with `changes`;
    no PYTHONPATH: nothing but an interpreter's own site-packages is importable."""
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIRJAX_DATA_DIR")}
    e.update(changes)
    return {k: v for k, v in e.items() if v is not None}


def sh(*cmd, cwd, **env_changes):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env(**env_changes),
                          capture_output=True, text=True, timeout=300)


def build_and_install(tmp: Path) -> Path:
    """The wheel of a copy of the sources (pyproject, README, LICENSE, dirjax/; built with the
    setuptools of this environment, no index), installed in a fresh venv -> its bin/ folder.
    Third-party packages come from this environment's site-packages through a `.pth` line:
    such a path's own .pth files are not read, so this checkout's editable install stays out."""
    from importlib.metadata import version
    assert int(version("setuptools").split(".")[0]) >= 77, \
        "the build backend is too old to build this pyproject: pip install -e '.[test]'"
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dirjax", src / "dirjax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
              "--no-index", "-w", tmp / "dist", src, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    [wheel] = (tmp / "dist").glob("dirjax-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    proc = sh(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
              "--no-index", wheel, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                   cwd=tmp).stdout.strip())
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_wheel_installed_elsewhere_runs_a_shipped_config(tmp_path):
    bin_ = build_and_install(tmp_path)
    away = tmp_path / "away"             # a user's folder: no configs/, no run.py
    away.mkdir()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    proc = sh(bin_ / "dirjax", "--help", cwd=away)
    assert proc.returncode == 0 and "dirjax run [--config NAME[:ARG]]" in proc.stdout, proc.stderr
    proc = sh(bin_ / "python", "-m", "dirjax", "--help", cwd=away)
    assert proc.returncode == 0 and "dirjax configs" in proc.stdout, proc.stderr

    # the API from the installed copy: its metadata's version, and no library noise on stderr
    proc = sh(bin_ / "python", "-c", "import dirjax; model, tok = dirjax.load_model(%r); "
              "print(dirjax.__file__); print(dirjax.__version__)" % TINY, cwd=away)
    assert proc.returncode == 0, proc.stderr
    file, got_version = proc.stdout.split()
    assert Path(file).is_relative_to(tmp_path / "venv") and not Path(file).is_relative_to(ROOT)
    assert got_version == version
    assert "PyTorch was not found" not in proc.stderr and "warning" not in proc.stderr.lower()

    proc = sh(bin_ / "dirjax", "run", "--config", "default", *TINY_RUN, cwd=away)
    assert proc.returncode == 0, proc.stderr
    assert "results in runs/default/" in proc.stdout
    rows = json.loads((away / "runs" / "default" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["original", "svd"]


def test_import_sets_up_the_process_before_jax_starts(tmp_path):
    """`import dirjax` first: the fast CPU kernels reach XLA and the compilation cache is on,
    with nothing on stderr."""
    proc = sh(sys.executable, "-c", "import dirjax, jax, os; jax.devices(); "
              "print(os.environ['XLA_FLAGS']); print(jax.config.jax_compilation_cache_dir)",
              cwd=tmp_path, XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=None,
              DIRJAX_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    flags, cache = proc.stdout.splitlines()
    assert "--xla_cpu_use_xnnpack=true" in flags and cache == str(tmp_path / "cache" / "xla")


def test_import_after_jax_started_says_what_to_do_in_one_line(tmp_path):
    """Too late for XLA's flags: one warning line that says what to do (the compile cache still
    reaches JAX's config, which it reads at the first compilation)."""
    code = ("import jax; jax.devices(); import dirjax; "
            "print(jax.config.jax_compilation_cache_dir)")
    proc = sh(sys.executable, "-c", code, cwd=tmp_path, XLA_FLAGS="",
              JAX_COMPILATION_CACHE_DIR=None, DIRJAX_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), proc.stderr
    assert "import dirjax before using JAX" in lines[0] and "XLA_FLAGS=" in lines[0]
    assert proc.stdout.strip() == str(tmp_path / "cache" / "xla")
    # the way out that the line names: DIRJAX_FAST_CPU=0 (XLA's own kernels), nothing to warn of
    proc = sh(sys.executable, "-c", code, cwd=tmp_path, XLA_FLAGS="", DIRJAX_FAST_CPU="0")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
