"""The `dirjax` command (also `python -m dirjax`; in a checkout `python run.py` is `dirjax run`).

    dirjax run [--config NAME[:ARG] | FILE.py[:ARG]] [--config.field=value ...] [--workdir DIR]
    dirjax configs [NAME]      the shipped configs (NAME: its docstring, commands, expected)
    dirjax --version

Thin: the job is `dirjax.experiment.run_experiment(config, workdir)`, which a notebook calls
the same way; this module turns a command line into its arguments and its outcome into text.
A mistake ends in one line `error: ...` and exit status 1, before any expensive work where it
can be known then.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from dirjax import __version__, report
from dirjax.errors import DirjaxError
from dirjax.experiment import run_experiment

# the configs shipped in the package (a checkout's configs/ is a link to this folder)
CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = str(CONFIGS / "default.py")

HELP = """\
dirjax: compress a model's token-embedding table, swap it in, evaluate or fine-tune, report.

    dirjax run [--config NAME[:ARG]] [--config.field=value ...] [--workdir DIR]
    dirjax configs [NAME]     list the shipped configs (NAME: its commands, expected results)
    dirjax --version

`dirjax run --help` says more. Python API: `import dirjax` (README.md)."""

RUN_HELP = """\
    {prog} [--config configs/X.py] [--config.field=value ...] [--workdir DIR]

No arguments: the shipped config `default` (offline SmolLM2 on stdlib prose). --config takes a
shipped config by name, with its argument if it takes one (`--config quality_sweep:smollm2-low`;
`dirjax configs` lists them), or a config file of your own (`--config my.py`, `my.py:ARG`);
`configs/X.py` names the shipped X where no such file exists. A config file is Python that
runs: its get_config() returns the fields of dirjax/config.py; `--config.field=value`
overrides one. The work directory (default runs/<config name>) receives results.json,
results.md, plot.png and the compressed embeddings; a rerun with the same work directory
reuses every finished result whose inputs are unchanged. The job is
`dirjax.experiment.run_experiment(config, workdir)`, which a notebook calls the same way.
A mistake (bad field, missing data or model, busy work directory) ends in one line
`error: ...` and exit status 1, before any expensive work where it can be known then."""

HELP_FLAGS = ("-h", "--help", "-help", "--helpfull")


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


def interrupted_line(workdir: str) -> str:
    return (f"interrupted: rerun the same command to resume (finished rows are kept in "
            f"{Path(workdir) / 'results.json'})")


_INTERRUPT = {"said": False}
INTERRUPT_GRACE_S = 3.0


def interrupted(workdir: str) -> None:
    """Ctrl-C during a run: one line (after any progress bar) instead of a traceback, and exit
    status 130 (128 + SIGINT, as a shell reports it). results.json holds the finished rows."""
    try:
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except ImportError:
        pass
    _INTERRUPT["said"] = True
    print(interrupted_line(workdir), file=sys.stderr)
    sys.exit(130)


def catch_ctrl_c(workdir: str):
    """Install the run's SIGINT handling; returns the function that undoes it.

    The handler raises KeyboardInterrupt, as Python's own does, so the run unwinds (its
    temporaries removed) to `interrupted`. Python drops an exception raised inside a gc
    callback or `__del__` (JAX registers a gc callback; "Exception ignored in ..."): such a
    KeyboardInterrupt is delivered again 50 ms later, silently. And one raised while XLA
    computes waits for the computation: a watchdog ends the process INTERRUPT_GRACE_S after
    Ctrl-C anyway, with the same line and status, as safe as a kill (every write is atomic,
    and the next run removes dead writers' temporaries: tests/test_faults.py)."""
    import os
    import signal
    import threading

    timers = []

    def later(seconds, fn, *args):
        timer = threading.Timer(seconds, fn, args)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    def watchdog():
        if not _INTERRUPT["said"]:
            sys.stderr.write(f"\n{interrupted_line(workdir)}\n")
            sys.stderr.flush()
        os._exit(130)

    def handler(signum, frame):
        later(INTERRUPT_GRACE_S, watchdog)
        raise KeyboardInterrupt

    hook = sys.unraisablehook

    def unraisable(u):
        if isinstance(u.exc_value, KeyboardInterrupt):      # lost: deliver it again
            later(0.05, os.kill, os.getpid(), signal.SIGINT)
        else:
            hook(u)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:          # signal handlers are set in the main thread only
        return lambda: None
    sys.unraisablehook = unraisable

    def restore():
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook
        for timer in timers:
            timer.cancel()
    return restore


# ----------------------------------------------------------------------------- configs

def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.py") if not p.stem.startswith("_"))


def resolve_config(spec: str) -> str:
    """The file a `--config` value names, `:ARG` kept: an existing file as given; else a
    shipped config by name (`quality_sweep`, `quality_sweep.py`) or as the checkout spells it
    (`configs/quality_sweep.py`, for a pip user who has no configs/ folder). A bare name that
    is none of them is refused with the list; any other path is left to fail as a file."""
    path, sep, arg = spec.partition(":")
    p = Path(path)
    if not path or p.exists():
        return spec
    bare = len(p.parts) == 1
    if (bare or p.parts[:-1] == ("configs",)) and p.suffix in ("", ".py"):
        shipped = CONFIGS / f"{p.stem}.py"
        if shipped.is_file():
            return f"{shipped}{sep}{arg}"
        if bare and not p.suffix:
            raise ValueError(f"no config named {path!r}: the shipped configs are "
                             f"{', '.join(shipped_configs())}; or give a file, --config FILE.py")
    return spec


def resolve_argv(argv: list[str]) -> list[str]:
    """argv with its `--config` value (`--config X`, `--config=X`, one dash too) resolved."""
    out, i = list(argv), 1
    while i < len(out):
        a = out[i]
        if a in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
            i += 1
        elif a.startswith(("--config=", "-config=")):
            flag, _, value = a.partition("=")
            out[i] = f"{flag}={resolve_config(value)}"
        i += 1
    return out


def describe(name: str) -> str:
    """A shipped config's docstring, its commands as a pip user types them, and its file."""
    path = CONFIGS / f"{name}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    doc = re.sub(r"(\S*/)?python run\.py", "dirjax run", doc)
    doc = re.sub(r"--config(=| )configs/(\w+)\.py", r"--config\1\2", doc)
    return f"{doc}\n\nfile: {path}"


def list_configs() -> str:
    rows = []
    for name in shipped_configs():
        tree = ast.parse((CONFIGS / f"{name}.py").read_text())
        doc = ast.get_docstring(tree) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        takes = any(isinstance(n, ast.FunctionDef) and n.name == "get_config" and n.args.args
                    for n in tree.body)
        rows.append((name + (":ARG" if takes else ""), first))
    width = max(len(n) for n, _ in rows)
    lines = [f"{n:<{width}}  {d}" for n, d in rows]
    return "\n".join(["shipped configs (run one: dirjax run --config NAME[:ARG]; "
                      "`dirjax configs NAME` shows its commands):", *lines,
                      f"files: {CONFIGS} (copy one to start your own)"])


# ----------------------------------------------------------------------------- run

def parse(argv: list[str], prog: str = "dirjax run"):
    """(config, workdir) from the command line (argv[0] is the program), ml_collections
    config-flags style."""
    from absl import flags
    from ml_collections import config_flags

    argv = resolve_argv(argv)
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
                else f"see {prog} --help")
        raise ValueError(f"unexpected argument {rest[1]!r}: {hint}")
    config = config_flag.value
    config.keys()   # a config file that failed to load raises only when first used
    name = Path(config_flags.get_config_filename(fv["config"])).stem
    return config, fv.workdir or str(Path("runs") / name)


def run(argv: list[str], prog: str = "dirjax run") -> None:
    """One job from the command line `argv` (argv[0] is the program, as sys.argv)."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(RUN_HELP.format(prog=prog))
        return
    try:            # (the process setup, dirjax/runtime.py, ran on `import dirjax`)
        config, workdir = parse(argv, prog)
    except Exception as e:  # absl / ml_collections: unknown flag, bad value, unreadable file
        message = str(e)
        if "Failed loading config file" in message:   # keep the cause: its last line
            message = f"cannot load the config file: {message.strip().splitlines()[-1].strip()}"
        fail(f"bad command line or config: {message}")

    restore = catch_ctrl_c(workdir)
    try:
        rows = run_experiment(config, workdir)
    except KeyboardInterrupt:
        interrupted(workdir)
    except DirjaxError as e:
        fail(str(e))
    except OSError as e:   # the machine, not dirjax: a full disk, a vanished folder
        fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")
    finally:
        restore()
    print(report.summary(rows))
    samples = Path(workdir) / "samples.md"
    if config.get("prompt") and samples.exists():
        print("\n" + samples.read_text())
    print(f"results in {workdir}/: results.json, results.md, plot.png")


def main(argv: list[str] | None = None, prog: str = "dirjax") -> None:
    """`dirjax COMMAND ...` (the console script and `python -m dirjax`)."""
    argv = list(sys.argv if argv is None else argv)
    command, rest = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    if command is None or command in HELP_FLAGS or command == "help":
        print(HELP)
    elif command == "--version":
        print(f"dirjax {__version__}")
    elif command == "run":
        run([f"{prog} run", *rest], prog=f"{prog} run")
    elif command == "configs":
        if not rest:
            print(list_configs())
        elif len(rest) == 1 and rest[0] in shipped_configs():
            print(describe(rest[0]))
        else:
            fail(f"no shipped config {' '.join(rest)!r}: "
                 f"the shipped configs are {', '.join(shipped_configs())}")
    else:
        hint = (f"run a job with {prog} run {' '.join(argv[1:])}" if command.startswith("-")
                else f"the commands are run, configs (see {prog} --help)")
        fail(f"unknown command {command!r}: {hint}")
