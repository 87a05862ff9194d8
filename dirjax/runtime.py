"""Process setup, done once before JAX's first computation: fast CPU kernels, quiet libraries,
and joining the other hosts of a multi-host run. `run.py` and the benches call `setup()`; a
notebook may too. Nothing here imports JAX at module level: XLA reads its flags when JAX
starts its backend.
"""
from __future__ import annotations

import logging
import os

# XLA:CPU flags: XNNPACK kernels instead of Eigen for the small matmuls of batch-32 AE steps
# (~1.6x faster steps here), and 512-bit vectors where the CPU has them for the loss's
# log/exp over [B, d] (~5% faster large-batch epochs on an AVX-512 machine; a preference,
# harmless elsewhere). Known to jaxlib >= 0.10 (an unknown XLA flag aborts the process).
# Results agree with the default kernels to fp32 rounding.
FAST_CPU_XLA_FLAGS = "--xla_cpu_use_xnnpack=true --xla_cpu_prefer_vector_width=512"


def add_fast_cpu_flags() -> None:
    """Append FAST_CPU_XLA_FLAGS to $XLA_FLAGS (unless DIRJAX_FAST_CPU=0 or jaxlib < 0.10)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        new_enough = tuple(int(x) for x in version("jaxlib").split(".")[:2]) >= (0, 10)
    except (PackageNotFoundError, ValueError):
        new_enough = False
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DIRJAX_FAST_CPU", "1") != "0" and new_enough and "xnnpack" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_CPU_XLA_FLAGS}".strip()


def quiet_libraries() -> None:
    """transformers without torch prints "PyTorch was not found..." on import: dirjax never
    uses torch models, so that advisory is noise on a user's terminal."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def join_hosts() -> None:
    """DIRJAX_DISTRIBUTED=1: `jax.distributed.initialize()` joins every process of a TPU pod
    slice (found automatically) or of a GPU cluster (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID); jax.devices() then spans all hosts."""
    if os.environ.get("DIRJAX_DISTRIBUTED") != "1":
        return
    import jax
    given = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                                ("process_id", "JAX_PROCESS_ID"))
             if v in os.environ}   # JAX reads only the coordinator address from the env
    jax.distributed.initialize(**given)


def compile_cache() -> None:
    """A persistent XLA compilation cache ($JAX_COMPILATION_CACHE_DIR, else
    $DIRJAX_CACHE/xla or ~/.cache/dirjax/xla): every evaluation compiles the model's forward
    for its shapes, and a rerun or the next row of a sweep finds it compiled."""
    from pathlib import Path
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        root = os.environ.get("DIRJAX_CACHE") or Path.home() / ".cache" / "dirjax"
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(root) / "xla")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")


def setup() -> None:
    """Everything above, in order."""
    add_fast_cpu_flags()
    quiet_libraries()
    compile_cache()
    join_hosts()
