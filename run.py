"""dirjax main job: compress a model's embedding table, swap it in, evaluate, report.

    python run.py [--config configs/X.py] [--config.field=value ...] [--workdir DIR]

No arguments: configs/default.py (offline SmolLM2 on stdlib prose). The work directory
(default runs/<config name>) receives results.json, results.md, plot.png and the compressed
embeddings; a rerun with the same work directory reuses finished compressions. The job itself
is `dirjax.experiment.run_experiment(config, workdir)`, which a notebook calls the same way.
A mistake (bad field, missing data or model) ends in one line `error: ...` and exit status 1.
"""
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.py")


def fail(message: str) -> None:
    """One line on stderr, exit status 1."""
    line = " ".join(str(message).replace("\\n", " ").split()) or "failed"
    print(f"error: {line}", file=sys.stderr)
    sys.exit(1)


def parse(argv: list[str]):
    """(config, workdir) from the command line, ml_collections config-flags style."""
    from absl import flags
    from ml_collections import config_flags

    flags.DEFINE_string("workdir", None, "work directory (default runs/<config name>)")
    # new attributes are accepted here and judged by dirjax.experiment.check_config, which
    # names the unknown field; method options (e.g. --config.method_options.ae.lr=3e-4) are
    # checked by the method itself
    config_flag = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "experiment config file (a get_config() Python file)",
        lock_config=False, accept_new_attributes=True)
    flags.FLAGS(argv)
    config = config_flag.value
    config.keys()   # a config file that failed to load raises only when first used
    name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    return config, flags.FLAGS.workdir or str(Path("runs") / name)


def setup_runtime() -> None:
    """Before JAX's first computation: fast CPU kernels, and joining the other hosts.

    XNNPACK makes the AE's small matmuls ~1.6x faster on CPU (bench/compress_speed.py); the
    flags are known to jaxlib >= 0.10 (an unknown XLA flag aborts the process, hence the check).
    DIRJAX_DISTRIBUTED=1: `jax.distributed.initialize()` joins every process of a TPU pod
    slice (found automatically) or of a GPU cluster (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID); jax.devices() then spans all hosts.
    """
    import jax
    import jaxlib

    from dirjax.compress.train import FAST_CPU_XLA_FLAGS

    flags = os.environ.get("XLA_FLAGS", "")
    new_enough = tuple(int(x) for x in jaxlib.__version__.split(".")[:2]) >= (0, 10)
    if os.environ.get("DIRJAX_FAST_CPU", "1") != "0" and new_enough and "xnnpack" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_CPU_XLA_FLAGS}".strip()
    if os.environ.get("DIRJAX_DISTRIBUTED") == "1":
        given = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                                    ("process_id", "JAX_PROCESS_ID"))
                 if v in os.environ}   # JAX reads only the coordinator address from the env
        jax.distributed.initialize(**given)


def main(argv: list[str]) -> None:
    setup_runtime()
    try:
        config, workdir = parse(argv)
    except Exception as e:  # absl / ml_collections: unknown flag, bad value, unreadable file
        message = str(e)
        if "Failed loading config file" in message:   # keep the cause: its last line
            message = f"cannot load the config file: {message.strip().splitlines()[-1].strip()}"
        fail(f"bad command line or config: {message}")

    from dirjax import report
    from dirjax.errors import DirjaxError
    from dirjax.experiment import run_experiment

    try:
        if config.get("job") == "finetune":   # configs/glue*.py, configs/squad.py
            from dirjax import finetune
            rows = finetune.run(config, workdir)
            print(finetune.summary_table(rows))
            print(f"results in {workdir}/results.json")
            return
        rows = run_experiment(config, workdir)
    except DirjaxError as e:
        fail(str(e))
    print(report.markdown_table(rows))
    print(report.verdict(rows))
    print(f"results in {workdir}/: results.json, results.md, plot.png, embeddings/")


if __name__ == "__main__":
    main(sys.argv)
