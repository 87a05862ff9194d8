"""Evaluation texts: WikiText by Hub name or from local files under a data dir, or offline prose.

Datasets (`name`, `split`):
  "wikitext-2-raw" ("test", "validation", "train")  one text; local file `wikitext-2-raw/test.txt`
  "wikitext-2"     ("test", "validation")            one text; local `wikitext-2/{test,valid}.txt`
  "stdlib"         ("heldout", "train")              English prose of Python's `pydoc_data.topics`

Where the files come from: the `data_dir` argument (config field) if set, else the environment
variable `DIRJAX_DATA_DIR`, else the Hub through `datasets` (imported only then).

WikiText by Hub name comes as rows, one per line of the original file ("" for blank lines);
`join_wikitext` joins them with blank lines ("\n\n".join), which gives byte for byte the text
of the shared `wikitext-2-raw/test.txt` (tested on its structure in tests/test_data.py). The
shared tokenised `wikitext-2/*.txt` hold one row per line and are joined the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

from dirjax.data.common import hub_dataset, resolve_data_dir
from dirjax.errors import ConfigError, DataError

# name -> (Hub path, Hub config, {split: local file under data_dir}). The raw file is already
# the joined text; the tokenised files hold one row per line (" " for a blank row).
TEXTS = {
    "wikitext-2-raw": ("wikitext", "wikitext-2-raw-v1", {"test": "wikitext-2-raw/test.txt"}),
    "wikitext-2": ("wikitext", "wikitext-2-v1",
                   {"test": "wikitext-2/test.txt", "validation": "wikitext-2/valid.txt"}),
}
SPLIT_ALIASES = {"dev": "validation", "valid": "validation"}

# The offline default text: `pydoc_data.topics.topics` values in sorted key order, joined with
# blank lines. Held out = every fourth topic (sorted positions 3, 7, 11, ...: 19 topics,
# 68k characters in Python 3.11); "train" = the rest,
# a disjoint text for anything that must be fitted on text (e.g. token frequencies).
STDLIB_HELDOUT_EVERY = 4


def normalise_split(name: str, split: str) -> str:
    split = SPLIT_ALIASES.get(split, split)
    if name == "stdlib":
        if split not in ("heldout", "train"):
            raise ConfigError(f"dataset 'stdlib' has splits 'heldout' and 'train', not {split!r}")
    elif split not in ("test", "validation", "train"):
        raise ConfigError(f"unknown split {split!r} for dataset {name!r}")
    return split


def join_wikitext(rows: list[str]) -> str:
    """WikiText rows as the Hub gives them ("" or one line ending in "\\n") -> the text file."""
    return "\n\n".join(rows)


def rows_from_lines(text: str) -> list[str]:
    """WikiText rows of a one-row-per-line file (the shared `wikitext-2/*.txt`), as the Hub has
    them."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line + "\n" if line.strip() else "" for line in lines]


def stdlib_text(split: str = "heldout") -> str:
    """English prose from the standard library's pydoc topics (see STDLIB_HELDOUT_EVERY)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    held = [k for i, k in enumerate(keys) if i % STDLIB_HELDOUT_EVERY == STDLIB_HELDOUT_EVERY - 1]
    chosen = held if split == "heldout" else [k for k in keys if k not in set(held)]
    return "\n\n".join(topics[k].strip() for k in chosen)


def _local_file(data_dir: Path, table: dict, name: str, split: str) -> Path:
    files = table[name][2]
    if split not in files:
        raise DataError(f"no local {split!r} split of {name!r} (have: {', '.join(files)})")
    path = data_dir / files[split]
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    return path


def load_text(name: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> str:
    """One evaluation text (a token stream is cut from it): wikitext or stdlib prose."""
    split = normalise_split(name, split)
    if name == "stdlib":
        return stdlib_text(split)
    if name not in TEXTS:
        raise ConfigError(f"unknown text dataset {name!r} (known: stdlib, {', '.join(TEXTS)})")
    local = resolve_data_dir(data_dir)
    if local is not None:
        text = _local_file(local, TEXTS, name, split).read_text(encoding="utf-8")
        return text if name == "wikitext-2-raw" else join_wikitext(rows_from_lines(text))
    hub_path, hub_config, _ = TEXTS[name]
    return join_wikitext(list(hub_dataset(hub_path, hub_config, split)["text"]))


def text_lines(text: str) -> list[str]:
    """The non-blank lines of a text, stripped (the units of masked-LM evaluation)."""
    return [line.strip() for line in text.split("\n") if line.strip()]


