"""Process setup, done once before JAX's backend starts: fast CPU kernels, a persistent
compilation cache, quiet libraries, and joining the other hosts of a multi-host run.

`import dirjax` calls `setup()` first of all (dirjax/__init__.py), so the API, a notebook, the
`dirjax` command and run.py all start the same way. Nothing here imports JAX at module level:
XLA reads $XLA_FLAGS when JAX starts its backend (the first computation or `jax.devices()`),
and JAX reads its JAX_* variables when it is imported. If JAX's backend already runs when
dirjax is imported, the XLA flags cannot take effect any more: `setup()` says so in one warning
line (what to do: import dirjax first, or set XLA_FLAGS yourself).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

# XLA:CPU flags: XNNPACK kernels instead of Eigen for the small matmuls of batch-32 AE steps
# (~1.6x faster steps here), and 512-bit vectors where the CPU has them for the loss's
# log/exp over [B, d] (~5% faster large-batch epochs on an AVX-512 machine; a preference,
# harmless elsewhere). Known to jaxlib >= 0.10 (an unknown XLA flag aborts the process).
# Results agree with the default kernels to fp32 rounding.
FAST_CPU_XLA_FLAGS = "--xla_cpu_use_xnnpack=true --xla_cpu_prefer_vector_width=512"


class StartupWarning(UserWarning):
    """dirjax was imported after JAX's backend started: its XLA flags are not in effect."""


def backend_started() -> bool:
    """Whether JAX's backends are already initialised, read without initialising them."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def fast_cpu_flags_wanted() -> bool:
    """FAST_CPU_XLA_FLAGS apply here: not turned off (DIRJAX_FAST_CPU=0), jaxlib >= 0.10, and
    $XLA_FLAGS does not choose the kernels itself."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        new_enough = tuple(int(x) for x in version("jaxlib").split(".")[:2]) >= (0, 10)
    except (PackageNotFoundError, ValueError):
        new_enough = False
    return (os.environ.get("DIRJAX_FAST_CPU", "1") != "0" and new_enough
            and "xnnpack" not in os.environ.get("XLA_FLAGS", ""))


def add_fast_cpu_flags() -> None:
    """Append FAST_CPU_XLA_FLAGS to $XLA_FLAGS where `fast_cpu_flags_wanted()`. Too late once
    JAX's backend runs: then, on a CPU-only process, one StartupWarning line says what to do."""
    if not fast_cpu_flags_wanted():
        return
    if backend_started():
        if set(sys.modules["jax._src.xla_bridge"]._backends) <= {"cpu"}:   # GPU/TPU: moot
            warn(f"JAX's backend started before `import dirjax`, so dirjax's fast CPU kernels "
                 f"are off in this process: import dirjax before using JAX, or set "
                 f"XLA_FLAGS=\"{FAST_CPU_XLA_FLAGS}\" before starting Python "
                 f"(DIRJAX_FAST_CPU=0 keeps XLA's defaults and silences this)")
        return
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} {FAST_CPU_XLA_FLAGS}".strip()


def warn(message: str) -> None:
    """A StartupWarning as ONE line on stderr (`warning: ...`, no file:line and source line),
    still subject to the process's warning filters (`-W ignore`, `warnings.filterwarnings`)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, StartupWarning, "dirjax", 0, module="dirjax")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def quiet_libraries() -> None:
    """transformers without torch prints "PyTorch was not found..." on import: dirjax never
    uses torch models, so that advisory is noise on a user's terminal."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def join_hosts() -> None:
    """DIRJAX_DISTRIBUTED=1: `jax.distributed.initialize()` joins every process of a TPU pod
    slice (found automatically) or of a GPU cluster (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID); jax.devices() then spans all hosts. Once per process
    (a program that joined itself is left as it is)."""
    if os.environ.get("DIRJAX_DISTRIBUTED") != "1":
        return
    import jax
    if jax.distributed.is_initialized():
        return
    given = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                                ("process_id", "JAX_PROCESS_ID"))
             if v in os.environ}   # JAX reads only the coordinator address from the env
    jax.distributed.initialize(**given)


def compile_cache() -> None:
    """A persistent XLA compilation cache ($JAX_COMPILATION_CACHE_DIR, else
    $DIRJAX_CACHE/xla or ~/.cache/dirjax/xla): every evaluation compiles the model's forward
    for its shapes, and a rerun or the next row of a sweep finds it compiled. JAX reads these
    variables when it is imported: if it already is, its config is set (where still unset)."""
    from pathlib import Path
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        root = os.environ.get("DIRJAX_CACHE") or Path.home() / ".cache" / "dirjax"
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(root) / "xla")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    if "jax" in sys.modules:
        import jax
        if jax.config.jax_compilation_cache_dir is None:
            jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


_done = False


def setup() -> None:
    """Everything above, in order; once per process (`import dirjax` does it; run.py, the
    benches and a notebook may call it again at no cost)."""
    global _done
    if _done:
        return
    add_fast_cpu_flags()
    quiet_libraries()
    compile_cache()
    join_hosts()
    _done = True
