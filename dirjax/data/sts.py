"""STS-B sentence pairs with gold similarity scores (dev = "validation"): local
`glue/STS-B/dev.tsv` under the data folder, or the Hub's `glue/stsb`."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from dirjax.data.common import hub_dataset, resolve_data_dir
from dirjax.data.text import _local_file, normalise_split
from dirjax.errors import ConfigError, DataError

STS = {"stsb": ("glue", "stsb", {"validation": "glue/STS-B/dev.tsv"})}


@dataclass
class SentencePairs:
    """STS data: `sentence1[i]`, `sentence2[i]` and the gold similarity `score[i]` (0-5)."""
    sentence1: list[str]
    sentence2: list[str]
    score: list[float]

    def __len__(self) -> int:
        return len(self.score)


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
    ds = hub_dataset(hub_path, hub_config, split)
    return SentencePairs(list(ds["sentence1"]), list(ds["sentence2"]),
                         [float(x) for x in ds["label"]])
