"""Where data comes from: a local data folder (the `data_dir` argument / config field, else the
environment variable `DIRJAX_DATA_DIR`), else the Hugging Face Hub by name through `datasets`
(imported only then)."""
from __future__ import annotations

import os
from pathlib import Path

from dirjax.errors import DataError, MissingPackageError

ENV_DATA_DIR = "DIRJAX_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: `data_dir` if given, else $DIRJAX_DATA_DIR, else None (Hub)."""
    chosen = data_dir or os.environ.get(ENV_DATA_DIR) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data dir {chosen} does not exist (config data_dir or ${ENV_DATA_DIR})")
    return path


def hub_dataset(path: str, config: str | None, split: str):
    """`datasets.load_dataset(path, config, split=split)`, its failures as one-line errors."""
    try:
        import datasets
    except ImportError:
        raise MissingPackageError(
            "reading datasets by Hub name needs the `datasets` package (pip install datasets), "
            f"or point data_dir / ${ENV_DATA_DIR} at local files") from None
    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as e:  # network, unknown name: the library raises many kinds
        raise DataError(f"cannot load {path}/{config} [{split}] from the Hub: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
