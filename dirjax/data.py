"""Evaluation data: by Hugging Face Hub name, from local files under a data dir, or offline prose.

Datasets (`name`, `split`):
  "wikitext-2-raw" ("test", "validation", "train")  one text; local file `wikitext-2-raw/test.txt`
  "wikitext-2"     ("test", "validation")            one text; local `wikitext-2/{test,valid}.txt`
  "stsb"           ("validation", alias "dev")       sentence pairs; local `glue/STS-B/dev.tsv`
  "stdlib"         ("heldout", "train")              English prose of Python's `pydoc_data.topics`

Where the files come from: the `data_dir` argument (config field) if set, else the environment
variable `DIRJAX_DATA_DIR`, else the Hub through `datasets` (imported only then).

WikiText by Hub name comes as rows, one per line of the original file ("" for blank lines);
`join_wikitext` joins them with blank lines ("\n\n".join), which gives byte for byte the text
of the shared `wikitext-2-raw/test.txt` (tested on its structure in tests/test_data.py). The
shared tokenised `wikitext-2/*.txt` hold one row per line and are joined the same way.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from dirjax.errors import ConfigError, DataError, MissingPackageError

ENV_DATA_DIR = "DIRJAX_DATA_DIR"

# name -> (Hub path, Hub config, {split: local file under data_dir}). The raw file is already
# the joined text; the tokenised files hold one row per line (" " for a blank row).
TEXTS = {
    "wikitext-2-raw": ("wikitext", "wikitext-2-raw-v1", {"test": "wikitext-2-raw/test.txt"}),
    "wikitext-2": ("wikitext", "wikitext-2-v1",
                   {"test": "wikitext-2/test.txt", "validation": "wikitext-2/valid.txt"}),
}
STS = {"stsb": ("glue", "stsb", {"validation": "glue/STS-B/dev.tsv"})}
SPLIT_ALIASES = {"dev": "validation", "valid": "validation"}
DATASETS = ("stdlib", *TEXTS, *STS)

# The offline default text: `pydoc_data.topics.topics` values in sorted key order, joined with
# blank lines. Held out = every fourth topic (sorted positions 3, 7, 11, ...: 19 topics,
# 68k characters in Python 3.11); "train" = the rest,
# a disjoint text for anything that must be fitted on text (e.g. token frequencies).
STDLIB_HELDOUT_EVERY = 4


@dataclass
class SentencePairs:
    """STS data: `sentence1[i]`, `sentence2[i]` and the gold similarity `score[i]` (0-5)."""
    sentence1: list[str]
    sentence2: list[str]
    score: list[float]

    def __len__(self) -> int:
        return len(self.score)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: `data_dir` if given, else $DIRJAX_DATA_DIR, else None (Hub)."""
    chosen = data_dir or os.environ.get(ENV_DATA_DIR) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data dir {chosen} does not exist (config data_dir or ${ENV_DATA_DIR})")
    return path


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
    """WikiText rows of a one-row-per-line file (the shared `wikitext-2/*.txt`), as the Hub has them."""
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


def _hub_dataset(path: str, config: str, split: str):
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
    return join_wikitext(list(_hub_dataset(hub_path, hub_config, split)["text"]))


def text_lines(text: str) -> list[str]:
    """The non-blank lines of a text, stripped (the units of masked-LM evaluation)."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def read_sts_tsv(path: Path) -> SentencePairs:
    """GLUE STS-B TSV: header with `sentence1`, `sentence2`, `score` columns; quotes literal."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        need = ("sentence1", "sentence2", "score")
        if header is None or any(c not in header for c in need):
            raise DataError(f"{path}: expected a header with columns {', '.join(need)}")
        i1, i2, iscore = (header.index(c) for c in need)
        s1, s2, score = [], [], []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                s1.append(row[i1]), s2.append(row[i2]), score.append(float(row[iscore]))
            except (IndexError, ValueError):
                raise DataError(f"{path}:{lineno}: malformed STS-B row") from None
    if not score:
        raise DataError(f"{path}: no rows")
    return SentencePairs(s1, s2, score)


def load_sts(name: str = "stsb", split: str = "validation",
             data_dir: str | os.PathLike | None = None) -> SentencePairs:
    """STS-B sentence pairs with gold scores (dev = "validation"; test has no public labels)."""
    split = normalise_split(name, split)
    if name not in STS:
        raise ConfigError(f"unknown STS dataset {name!r} (known: {', '.join(STS)})")
    local = resolve_data_dir(data_dir)
    if local is not None:
        return read_sts_tsv(_local_file(local, STS, name, split))
    hub_path, hub_config, _ = STS[name]
    ds = _hub_dataset(hub_path, hub_config, split)
    return SentencePairs(list(ds["sentence1"]), list(ds["sentence2"]),
                         [float(x) for x in ds["label"]])
