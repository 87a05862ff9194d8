"""Calibration data for the output- and frequency-aware quantisers (quant_freq, quant_gptq).

Collected from text DISJOINT from the evaluation text. The runner chooses it from the method's
`calibration` option, by default WikiText-2 *validation* when the evaluation text is
WikiText-2, else the stdlib "train" topics (`dirjax.config`); from Python, pass any text:

    counts  `[V]`   token counts of the calibration text (mixed precision by frequency)
    hidden  `[N, d]` final hidden states of the ORIGINAL model on its first N tokens (GPTQ on the
                     tied head: logits h @ E^T), windows of `max_length`, each after the
                     tokenizer's BOS when it adds one (Gemma: without it the states are
                     another model's, median cosine 0.87 to the BOS ones, nll 4.26 vs 3.10)

    calib = collect(model, tokenizer, text, n_hidden=8192)
    emb = compress(table, rate=10, method="quant_freq", **calib)
"""
from __future__ import annotations

import numpy as np

from dirjax.errors import DataError


def token_counts(tokenizer, text: str, vocab_size: int) -> np.ndarray:
    """Counts `[V]` float64 of the tokens of `text` (one stream per line, no special tokens)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError("calibration text is empty")
    ids = tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]
    flat = np.concatenate([np.asarray(x, np.int64) for x in ids if len(x)])
    if flat.max() >= vocab_size:
        raise DataError(f"tokenizer id {flat.max()} >= vocab size {vocab_size}")
    return np.bincount(flat, minlength=vocab_size).astype(np.float64)


def hidden_states(model, ids: np.ndarray, n: int, max_length: int = 512,
                  bos_id: int | None = None) -> np.ndarray:
    """Final hidden states `[min(n, N), d]` of `model.encode` on the stream `ids [N]`, in windows
    of `max_length` tokens; with `bos_id`, BOS + max_length - 1 tokens (BOS's state dropped)."""
    import jax.numpy as jnp
    ids = np.asarray(ids, np.int32)[:n]
    step = max_length - (bos_id is not None)
    out = []
    for i in range(0, len(ids), step):
        window = ids[i:i + step]
        if bos_id is not None:
            window = np.concatenate([[bos_id], window]).astype(np.int32)
        h = np.asarray(model.encode(jnp.asarray(window[None]), None), np.float32)[0]
        out.append(h[bos_id is not None:])
    return np.concatenate(out)


def collect(model, tokenizer, text: str, *, n_hidden: int = 8192, max_length: int = 512,
            bos_id: int | None = None) -> dict:
    """{"counts": [V], "hidden": [N, d]} for the quantisers' `counts=` / `hidden=` options
    (no "hidden" when n_hidden is 0 or the model has no LM head); `bos_id`: each window of
    hidden states starts with it (the runner passes the tokenizer's BOS when it adds one)."""
    v = model.config.vocab_size
    counts = token_counts(tokenizer, text, v)
    out = {"counts": counts}
    if n_hidden and model.out_embedding is not None:   # hidden states only matter for an LM head
        stream = np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        out["hidden"] = hidden_states(model, stream, n_hidden, max_length, bos_id)
    return out
