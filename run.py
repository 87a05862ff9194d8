"""dirjax: compress a model's embedding table, swap it in, evaluate or fine-tune, report.

    python run.py [--config configs/X.py] [--config.field=value ...] [--workdir DIR]

The checkout's entry: the same as `dirjax run ...` (dirjax/cli.py, the installed command),
with the same flags and messages. No arguments: configs/default.py (offline SmolLM2 on stdlib
prose); `python run.py --help` says more, `dirjax configs` lists the configs.
"""
import sys


def main(argv: list[str]) -> None:
    from dirjax import cli
    cli.run(argv, prog="python run.py")


if __name__ == "__main__":
    main(sys.argv)
