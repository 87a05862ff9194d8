"""GLUE scoring: the official metric of each task on predictions against gold labels (dev).

The tasks themselves (columns, labels, which metrics) and their examples: `dirjax.data.glue`.
"""
from __future__ import annotations

import numpy as np

from dirjax.data.glue import Task, get_task
from dirjax.errors import DataError


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
    """Matthews correlation (CoLA): (TP TN - FP FN) / sqrt of the four margins; 0 if one is
    empty."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den else 0.0


def pearson(pred, gold) -> float:
    import scipy.stats
    return float(scipy.stats.pearsonr(np.asarray(pred, np.float64),
                                      np.asarray(gold, np.float64))[0])


def spearman(pred, gold) -> float:
    import scipy.stats
    return float(scipy.stats.spearmanr(np.asarray(pred, np.float64),
                                       np.asarray(gold, np.float64))[0])


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
