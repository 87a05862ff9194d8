"""GLUE data: the eight tasks (columns, labels, metric names) and their examples, read from local
TSV files or the Hub.

Local files are the GLUE exports under `<data_dir>/glue/<Task>/{train,dev}.tsv`; each task
reads its own columns (see `TASKS`). Files are read with quoting off: MRPC and others hold
literal `"` characters that a CSV reader would swallow, and MRPC starts with a UTF-8 BOM.
Labels follow the Hugging Face `glue` dataset order (RTE/QNLI: 0 = entailment; MNLI:
entailment, neutral, contradiction), so local and Hub data give the same integers.
There are no public test labels: the evaluation split is dev (MNLI: matched and mismatched).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from dirjax.data.common import hub_dataset, resolve_data_dir
from dirjax.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    """How to read one GLUE task and score it.

    Columns are header names, or integer positions for a file without a header (CoLA).
    `labels` lists label strings in Hub order (a file holding integers needs none);
    `num_labels == 1` means regression.
    """
    name: str            # Hub config name ("cola", "mnli", ...)
    folder: str          # local folder under glue/ ("CoLA", "MNLI", ...)
    text_a: str | int
    text_b: str | int | None
    label: str | int
    num_labels: int
    metrics: tuple[str, ...]
    labels: tuple[str, ...] = ()
    header: bool = True
    dev_splits: tuple[str, ...] = ("dev",)
    hub_columns: tuple[str, str | None] = ("sentence", None)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


NLI = ("entailment", "not_entailment")
TASKS = {t.name: t for t in [
    # CoLA: no header; source, label, original label, sentence
    Task("cola", "CoLA", 3, None, 1, 2, ("matthews",), header=False),
    Task("sst2", "SST-2", "sentence", None, "label", 2, ("accuracy",)),
    Task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", 2, ("f1", "accuracy"),
         hub_columns=("sentence1", "sentence2")),
    Task("stsb", "STS-B", "sentence1", "sentence2", "score", 1, ("pearson", "spearman"),
         hub_columns=("sentence1", "sentence2")),
    Task("qqp", "QQP", "question1", "question2", "is_duplicate", 2, ("f1", "accuracy"),
         hub_columns=("question1", "question2")),
    Task("mnli", "MNLI", "sentence1", "sentence2", "gold_label", 3, ("accuracy",),
         labels=("entailment", "neutral", "contradiction"),
         dev_splits=("dev_matched", "dev_mismatched"), hub_columns=("premise", "hypothesis")),
    Task("qnli", "QNLI", "question", "sentence", "label", 2, ("accuracy",), labels=NLI,
         hub_columns=("question", "sentence")),
    Task("rte", "RTE", "sentence1", "sentence2", "label", 2, ("accuracy",), labels=NLI,
         hub_columns=("sentence1", "sentence2")),
]}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}
HUB_SPLITS = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
              "dev_mismatched": "validation_mismatched"}


@dataclasses.dataclass
class Examples:
    """Sentence (pairs) and labels `[N]` (int64, or float32 for regression)."""
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.text_a)

    def take(self, n: int) -> "Examples":
        """The first `n` examples (for quick runs)."""
        return Examples(self.text_a[:n], None if self.text_b is None else self.text_b[:n],
                        self.labels[:n])


def get_task(name: str) -> Task:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ConfigError(f"unknown GLUE task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[key]


def load(task: str | Task, split: str = "train", data_dir=None) -> Examples:
    """Examples of `task`'s `split` ("train", "dev", MNLI "dev_matched"/"dev_mismatched").

    From `<data_dir>/glue/<Folder>/<split>.tsv` when a data folder is given (argument or
    $DIRJAX_DATA_DIR), else from the Hub's `glue` dataset (needs `datasets` and network).
    """
    task = task if isinstance(task, Task) else get_task(task)
    root = resolve_data_dir(data_dir)
    if root is None:
        return load_hub(task, split)
    return load_tsv(task, root / "glue" / task.folder / f"{split}.tsv")


def load_tsv(task: Task, path: Path) -> Examples:
    """Read a GLUE TSV with quoting off, by the task's columns."""
    if not path.exists():
        raise DataError(f"missing GLUE file {path}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # utf-8-sig drops MRPC's BOM
    rows = [line.split("\t") for line in lines if line.strip()]
    if task.header:
        header, rows = rows[0], rows[1:]
        cols = [_column(header, c, path) for c in (task.text_a, task.text_b, task.label)]
    else:
        cols = [task.text_a, task.text_b, task.label]
    need = max(c for c in cols if c is not None) + 1
    good = [r for r in rows if len(r) >= need]
    if len(good) < len(rows):  # QQP's export has a few broken lines; the HF reader skips them too
        log.warning("%s: skipped %d malformed lines", path, len(rows) - len(good))
    if not good:
        raise DataError(f"{path}: no examples")
    a, b, y = cols
    labels = [_label(task, r[y], path) for r in good]
    return Examples([r[a] for r in good], None if b is None else [r[b] for r in good],
                    np.asarray(labels, np.float32 if task.is_regression else np.int64))


def _column(header: list[str], name, path) -> int | None:
    if name is None or isinstance(name, int):
        return name
    if name not in header:
        raise DataError(f"{path}: no column {name!r} in header {header}")
    return header.index(name)


def _label(task: Task, value: str, path) -> float | int:
    value = value.strip()
    if task.is_regression:
        return float(value)
    if value in task.labels:
        return task.labels.index(value)
    try:
        label = int(value)
    except ValueError:
        raise DataError(f"{path}: unknown label {value!r} for {task.name}") from None
    if not 0 <= label < task.num_labels:
        raise DataError(f"{path}: label {label} out of range for {task.name}")
    return label


def load_hub(task: Task, split: str) -> Examples:
    """The Hub's `nyu-mll/glue` dataset (through `datasets`, imported only then)."""
    if split not in HUB_SPLITS:
        raise ConfigError(f"unknown GLUE split {split!r}")
    ds = hub_dataset("nyu-mll/glue", task.name, HUB_SPLITS[split])
    a, b = task.hub_columns
    dtype = np.float32 if task.is_regression else np.int64
    return Examples(list(ds[a]), None if b is None else list(ds[b]), np.asarray(ds["label"], dtype))
