"""GLUE: the eight tasks, their data (local TSV files or the Hub) and their official metrics.

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
import os
from pathlib import Path

import numpy as np

from dirjax.errors import ConfigError, DataError, MissingPackageError

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


def data_dir_of(data_dir: str | os.PathLike | None) -> Path | None:
    """The data folder: the argument, else $DIRJAX_DATA_DIR, else None (Hub)."""
    data_dir = data_dir or os.environ.get("DIRJAX_DATA_DIR")
    return Path(data_dir) if data_dir else None


def load(task: str | Task, split: str = "train", data_dir=None) -> Examples:
    """Examples of `task`'s `split` ("train", "dev", MNLI "dev_matched"/"dev_mismatched").

    From `<data_dir>/glue/<Folder>/<split>.tsv` when a data folder is given (argument or
    $DIRJAX_DATA_DIR), else from the Hub's `glue` dataset (needs `datasets` and network).
    """
    task = task if isinstance(task, Task) else get_task(task)
    root = data_dir_of(data_dir)
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
    """The Hub's `nyu-mll/glue` dataset (imported lazily: `datasets` is optional)."""
    try:
        import datasets
    except ImportError:
        raise MissingPackageError(
            "GLUE from the Hub needs `datasets` (pip install datasets), or give data_dir") from None
    if split not in HUB_SPLITS:
        raise ConfigError(f"unknown GLUE split {split!r}")
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name, split=HUB_SPLITS[split])
    except Exception as e:  # network, missing split: one line for the user
        raise DataError(f"cannot load glue/{task.name} {split} from the Hub: {e}".splitlines()[0]) from None
    a, b = task.hub_columns
    dtype = np.float32 if task.is_regression else np.int64
    return Examples(list(ds[a]), None if b is None else list(ds[b]), np.asarray(ds["label"], dtype))


# ---------------------------------------------------------------- metrics

def accuracy(pred, gold) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred, gold) -> float:
    """Binary F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = np.sum((pred == 1) & (gold == 1))
    fp = np.sum((pred == 1) & (gold == 0))
    fn = np.sum((pred == 0) & (gold == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews(pred, gold) -> float:
    """Matthews correlation (CoLA): (TP TN - FP FN) / sqrt of the four margins; 0 if one is empty."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den else 0.0


def pearson(pred, gold) -> float:
    import scipy.stats
    return float(scipy.stats.pearsonr(np.asarray(pred, np.float64), np.asarray(gold, np.float64))[0])


def spearman(pred, gold) -> float:
    import scipy.stats
    return float(scipy.stats.spearmanr(np.asarray(pred, np.float64), np.asarray(gold, np.float64))[0])


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson,
           "spearman": spearman}


def predictions(task: Task, outputs: np.ndarray) -> np.ndarray:
    """Head outputs `[N, num_labels]` -> predictions `[N]` (argmax, or the score itself)."""
    outputs = np.asarray(outputs)
    return outputs[:, 0] if task.is_regression else outputs.argmax(-1)


def score(task: str | Task, pred, gold) -> dict[str, float]:
    """Every official metric of `task` for predictions `[N]` against gold labels `[N]`."""
    task = task if isinstance(task, Task) else get_task(task)
    if len(pred) != len(gold) or len(gold) == 0:
        raise DataError(f"{task.name}: {len(pred)} predictions for {len(gold)} labels")
    return {m: METRICS[m](pred, gold) for m in task.metrics}
