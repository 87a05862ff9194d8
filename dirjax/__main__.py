"""`python -m dirjax ...`: the `dirjax` command (dirjax/cli.py)."""
from dirjax.cli import main

if __name__ == "__main__":
    main(prog="python -m dirjax")
