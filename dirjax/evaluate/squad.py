"""SQuAD v1.1 scoring: feature windows, n-best span decoding and the official EM / F1
(the examples themselves: `dirjax.data.squad`).

Windows follow the Hugging Face `run_qa` convention: `[CLS] question [SEP] context [SEP]` of
at most `max_length` (384) tokens; a context too long for one window is cut into windows that
overlap by `stride` (128) tokens, so every context token lies in some window. Each window keeps
the character offsets of its context tokens, so a predicted token span maps back to text.
The normalisation and the EM / F1 below are those of the official `evaluate-v1.1.py`.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import string

import numpy as np

from dirjax.data.squad import Example


@dataclasses.dataclass
class Features:
    """Windows `[F, ...]` lists of token ids; offsets `[F][T]` (start, end) or None off-context."""
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    offsets: list[list[tuple[int, int] | None]]
    example_index: np.ndarray   # [F] which example each window comes from
    start: np.ndarray           # [F] answer start token (0 = [CLS] when not inside the window)
    end: np.ndarray             # [F] answer end token, inclusive

    def __len__(self) -> int:
        return len(self.input_ids)


def featurize(examples: list[Example], tokenizer, max_length: int = 384,
              stride: int = 128) -> Features:
    """Tokenise question + context into overlapping windows with context offsets.

    Training targets: the tokens holding the first answer's first and last characters when the
    whole answer lies inside the window, else (0, 0), the [CLS] token, as BERT does.
    """
    enc = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                    truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    return_token_type_ids=True)
    index = np.asarray(enc["overflow_to_sample_mapping"], np.int64)
    offsets, starts, ends = [], [], []
    for f in range(len(enc["input_ids"])):
        seq = enc.sequence_ids(f)
        offs = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][f], seq)]
        offsets.append(offs)
        s, e = answer_tokens(examples[index[f]], offs)
        starts.append(s)
        ends.append(e)
    return Features(enc["input_ids"], enc["token_type_ids"], offsets, index,
                    np.asarray(starts, np.int64), np.asarray(ends, np.int64))


def answer_tokens(example: Example, offsets) -> tuple[int, int]:
    """(start, end) token positions of the first answer inside a window, else (0, 0)."""
    if example.answer_start < 0 or not example.answers:
        return 0, 0
    a0 = example.answer_start
    a1 = a0 + len(example.answers[0])
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > a0 or offsets[ctx[-1]][1] < a1:
        return 0, 0
    start = next(i for i in ctx if offsets[i][1] > a0)
    end = next(i for i in reversed(ctx) if offsets[i][0] < a1)
    return start, end


def decode(features: Features, start_logits, end_logits, examples: list[Example],
           n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """Best answer text per example id from window logits `[F, T]` (ragged rows allowed).

    For every window, the `n_best` highest start and end tokens are paired; a pair counts when
    both lie in the context, end >= start and the span has at most `max_answer_length` tokens.
    Its score is start + end logit; the best over all windows of an example wins.
    """
    best: dict[int, tuple[float, str]] = {}
    for f in range(len(features)):
        ex = int(features.example_index[f])
        offs = features.offsets[f]
        s_log = np.asarray(start_logits[f], np.float64)[:len(offs)]
        e_log = np.asarray(end_logits[f], np.float64)[:len(offs)]
        top_s = np.argsort(s_log)[::-1][:n_best]
        top_e = np.argsort(e_log)[::-1][:n_best]
        for s in top_s:
            for e in top_e:
                if offs[s] is None or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                sc = s_log[s] + e_log[e]
                if ex not in best or sc > best[ex][0]:
                    best[ex] = (sc, examples[ex].context[offs[s][0]:offs[e][1]])
    return {e.id: best.get(i, (0.0, ""))[1] for i, e in enumerate(examples)}


# ------------------------------------------------ official v1.1 evaluation

def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def evaluate(examples: list[Example], predictions: dict[str, str]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent, each the max over gold answers, averaged over examples."""
    em = f1 = 0.0
    for e in examples:
        pred = predictions.get(e.id, "")
        em += max(exact_match_score(pred, g) for g in e.answers)
        f1 += max(f1_score(pred, g) for g in e.answers)
    n = max(len(examples), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
