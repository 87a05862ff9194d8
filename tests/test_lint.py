"""ruff (pyproject's [tool.ruff]: pycodestyle at 100 columns, pyflakes, import order) finds
nothing in the package, its tests, benches, scripts and the CLI entry."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    return [str(exe)] if exe.exists() else [shutil.which("ruff") or "ruff"]


def test_ruff_is_clean():
    proc = subprocess.run([*ruff(), "check", "--no-cache", "dirjax", "tests", "bench", "scripts",
                           "run.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
