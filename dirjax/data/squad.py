"""SQuAD v1.1 data: the questions, contexts and gold answers of an official JSON file.

Local file `<data_dir>/squad/dev-v1.1.json` (train: `train-v1.1.json`, not in the shared
folder), or the Hub's `rajpurkar/squad` by name when no data folder is set.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dirjax.data.common import hub_dataset, resolve_data_dir
from dirjax.errors import DataError

FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}
HUB_SPLITS = {"train": "train", "dev": "validation"}


@dataclasses.dataclass
class Example:
    id: str
    question: str
    context: str
    answers: list[str]          # gold answer texts (dev: usually 3)
    answer_start: int = -1      # character start of the first answer (training)


def load(path: str | Path) -> list[Example]:
    """Examples of an official SQuAD v1.1 JSON file (`dev-v1.1.json`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing SQuAD file {path}")
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{path} is not a SQuAD JSON file: {e}") from None
    out = []
    for article in articles:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = qa["answers"]
                out.append(Example(qa["id"], qa["question"], para["context"],
                                   [a["text"] for a in answers],
                                   answers[0]["answer_start"] if answers else -1))
    return out


def load_split(split: str = "dev", data_dir=None, train_file: str | None = None) -> list[Example]:
    """SQuAD `split` ("train" / "dev") from the data folder (argument, else $DIRJAX_DATA_DIR),
    else from the Hub."""
    if split not in FILES:
        raise DataError(f"unknown SQuAD split {split!r} (train, dev)")
    root = resolve_data_dir(data_dir)
    if root is not None:
        name = train_file if split == "train" and train_file else FILES[split]
        return load(root / "squad" / name)
    ds = hub_dataset("rajpurkar/squad", None, HUB_SPLITS[split])
    return [Example(r["id"], r["question"], r["context"], list(r["answers"]["text"]),
                    (r["answers"]["answer_start"] or [-1])[0]) for r in ds]
