"""Session-wide test setup: 4 virtual CPU devices, so mesh code is tested 1-device vs 4-device;
one persistent XLA compilation cache for the session, its xdist workers and the run.py
subprocesses it starts (tests rebuild the same tiny models' programs many times); `run_here`,
run.py's main() called in this process."""
import importlib.util
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

# The suite's tiny programs spend more time compiling (~40% of its CPU) than running: XLA:CPU's
# older fusion emitter and LLVM at -O0 compile them faster (2026-12-02, 2 workers: -O0 took the
# suite from 2 min 55 s to 2 min 17 s, the old emitter from 2 min 10 s to 1 min 40 s). The
# programs compute the same (the HLO passes that fix the numerics still run); only their
# machine code is less tuned. run.py and the benches keep XLA's defaults.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0"
                           " --xla_cpu_use_fusion_emitters=false").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dirjax-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_here(monkeypatch, capsys):
    """run.py's main() in this process (what its own process does after the imports, ~1 s
    less per call): -> returncode, stdout, stderr, as subprocess.run gives them."""
    spec = importlib.util.spec_from_file_location("dirjax_run_py", ROOT / "run.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    def call(*args, cwd):
        monkeypatch.chdir(cwd)
        monkeypatch.delenv("DIRJAX_DATA_DIR", raising=False)
        environ = dict(os.environ)           # runtime.setup() adds XLA flags: not for later tests
        capsys.readouterr()
        try:
            cli.main(["run.py", *args])
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            os.environ.clear()
            os.environ.update(environ)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call
