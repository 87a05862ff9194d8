"""dirjax: compress a model's embedding table, swap it in, evaluate or fine-tune, report.

    python run.py [--config configs/X.py] [--config.field=value ...] [--workdir DIR]

No arguments: configs/default.py (offline SmolLM2 on stdlib prose). A config file is Python
that runs: its get_config() returns the fields of dirjax/config.py; `--config.field=value`
overrides one. The work directory (default runs/<config name>) receives results.json,
results.md, plot.png and the compressed embeddings; a rerun with the same work directory
reuses every finished result whose inputs are unchanged. The job is
`dirjax.experiment.run_experiment(config, workdir)`, which a notebook calls the same way.
A mistake (bad field, missing data or model, busy work directory) ends in one line
`error: ...` and exit status 1, before any expensive work where it can be known then.
"""
import sys
from pathlib import Path

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.py")


def fail(message: str) -> None:
    """One line on stderr (on a line of its own, after any progress bar), exit status 1."""
    try:
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except ImportError:
        pass
    line = " ".join(str(message).replace("\\n", " ").split()) or "failed"
    print(f"error: {line}", file=sys.stderr)
    sys.exit(1)


def parse(argv: list[str]):
    """(config, workdir) from the command line, ml_collections config-flags style."""
    from absl import flags
    from ml_collections import config_flags

    # flags of their own (not absl's global FLAGS): main() can be called again in one process
    # (a notebook, the tests) and reads only the argv it is given
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "work directory (default runs/<config name>)",
                        flag_values=fv)
    # new attributes are accepted here and judged by dirjax.config.check_config, which names
    # the unknown field (for both jobs)
    config_flag = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "experiment config file (a get_config() Python file)",
        flag_values=fv, lock_config=False, accept_new_attributes=True, sys_argv=list(argv))
    rest = fv(list(argv))
    if len(rest) > 1:
        hint = (f"give the config as --config {rest[1]}" if rest[1].endswith(".py")
                else "see python run.py --help")
        raise ValueError(f"unexpected argument {rest[1]!r}: {hint}")
    config = config_flag.value
    config.keys()   # a config file that failed to load raises only when first used
    name = Path(config_flags.get_config_filename(fv["config"])).stem
    return config, fv.workdir or str(Path("runs") / name)


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(__doc__.strip())
        return
    from dirjax import runtime
    runtime.setup()
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
        rows = run_experiment(config, workdir)
    except DirjaxError as e:
        fail(str(e))
    except OSError as e:   # the machine, not dirjax: a full disk, a vanished folder
        fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")
    print(report.summary(rows))
    samples = Path(workdir) / "samples.md"
    if config.get("prompt") and samples.exists():
        print("\n" + samples.read_text())
    print(f"results in {workdir}/: results.json, results.md, plot.png")


if __name__ == "__main__":
    main(sys.argv)
