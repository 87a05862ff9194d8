"""Zero-shot semantic textual similarity: Spearman of embedding cosine vs gold (STS-B).

A sentence embedding is the attention-mask-weighted mean of the encoder's final hidden states
(sentence-transformers' mean pooling); similarity is the cosine of the two embeddings; the
score is scipy's Spearman rank correlation with the gold scores (reports show it x100).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from dirjax.errors import DataError
from dirjax.evaluate.batching import bucket_batches, jit_on_model, pad_rows
from dirjax.models.heads import mean_pool


def _mean_pooled(graphdef, state, tokens, mask):
    """[B, d] mean of the hidden states `[B, T, d]` over the real (mask 1) tokens."""
    model = nnx.merge(graphdef, state)
    return mean_pool(model.encode(tokens, mask).astype(jnp.float32), mask)


def sentence_embeddings(model, tokenizer, sentences: list[str], *, batch_size: int = 32,
                        max_length: int = 128, progress: bool = True,
                        compute_dtype: str = "float32") -> tuple[np.ndarray, int]:
    """Mean-pooled embeddings `[N, d]` (fp32) of `sentences` and the number of tokens encoded;
    `compute_dtype` "bfloat16": bf16 matmul operands, fp32 sums and norms, pooled in fp32."""
    ids = tokenizer(list(sentences), add_special_tokens=True, truncation=True,
                    max_length=max_length)["input_ids"]
    step, state = jit_on_model(_mean_pooled, model, compute_dtype)
    out: list[np.ndarray | None] = [None] * len(ids)
    batches = list(bucket_batches([len(x) for x in ids], batch_size))
    for idx, length in tqdm(batches, desc="embeddings", leave=False, disable=not progress):
        rows = [ids[i] for i in idx] + [ids[idx[0]]] * (batch_size - len(idx))
        tokens = pad_rows([np.asarray(r) for r in rows], length, 0)
        mask = pad_rows([np.ones(len(r), np.int32) for r in rows], length, 0)
        emb = np.asarray(step(state, tokens, mask))
        for j, i in enumerate(idx):
            out[i] = emb[j]
    return np.stack(out), int(sum(len(x) for x in ids))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine `[N]` of `a, b [N, d]`."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def sts_spearman(model, tokenizer, pairs, *, batch_size: int = 32, max_length: int = 128,
                 progress: bool = True, compute_dtype: str = "float32") -> dict:
    """{"spearman": rho in [-1, 1], "pairs": N, "tokens": tokens encoded} on `SentencePairs`."""
    from scipy.stats import spearmanr

    if len(pairs) < 2:
        raise DataError(f"need at least 2 sentence pairs for a rank correlation, got {len(pairs)}")
    # embed all sentences in one pass: the shared length buckets compile once
    emb, tokens = sentence_embeddings(model, tokenizer, pairs.sentence1 + pairs.sentence2,
                                      batch_size=batch_size, max_length=max_length,
                                      progress=progress, compute_dtype=compute_dtype)
    n = len(pairs)
    sims = cosine(emb[:n], emb[n:])
    rho = spearmanr(sims, np.asarray(pairs.score)).statistic
    return {"spearman": float(rho), "pairs": n, "tokens": tokens}
