"""Token scores from final hidden states without `[N, V]` logits: -log p(target) as a running
log-sum-exp over slices of the vocabulary (a `lax.scan`), so peak memory does not grow with V.

A 262k-token vocabulary (Gemma 3) makes a window of 513 tokens' logits 0.5 GB in fp32, and a
batch of 4 windows 2 GB, most of the evaluation's time and memory. Here each slice of `chunk`
rows gives `[N, chunk]` logits (`embedding.attend_chunk`: a dense table's rows, a low-rank
embedding's codes after one `h @ W^T`, a quantised one dequantised a slice at a time), folded
into a running maximum and sum of exponentials. The target's logit is h . e_target from the
looked-up row. Same numbers as the full-logit path to fp32 rounding (tests/test_scoring.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dirjax.embedding import attend_chunk

CHUNK = 8192   # vocabulary rows per slice: [N, 8192] fp32 logits (N = 2048 tokens: 64 MB)


def softcap(model):
    """The model's final-logit soft-capping (Gemma), or None."""
    return getattr(getattr(model, "config", None), "final_logit_softcapping", None)


def token_nll(model, h: jax.Array, targets: jax.Array, chunk: int | None = CHUNK) -> jax.Array:
    """-log p(targets) `[...]` (fp32) from final hidden states `h [..., d]` through the model's
    output head (`model.out_embedding`). chunk=None (or >= V): the full-logit path."""
    emb, cap = model.out_embedding, softcap(model)

    def capped(logits):
        logits = logits.astype(jnp.float32)
        return logits if not cap else jnp.tanh(logits / cap) * cap

    v = emb.vocab_size
    if chunk is None or chunk >= v:
        logits = capped(emb.attend(h))
        return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
            logits, targets[..., None], axis=-1)[..., 0]
    first = jnp.arange(chunk)

    def fold(carry, i):
        m, s = carry
        start = jnp.minimum(i * chunk, v - chunk)   # the last slice ends at V (overlapping)
        logits = capped(attend_chunk(emb, h, start, chunk))
        # columns an earlier slice already counted (the last slice's overlap) are left out
        logits = jnp.where(start + first >= i * chunk, logits, -jnp.inf)
        m_new = jnp.maximum(m, logits.max(axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[..., None]).sum(axis=-1)
        return (m_new, s), None

    init = (jnp.full(h.shape[:-1], -jnp.inf, jnp.float32), jnp.zeros(h.shape[:-1], jnp.float32))
    (m, s), _ = jax.lax.scan(fold, init, jnp.arange(-(-v // chunk)))
    target = capped((h * emb(targets).astype(h.dtype)).sum(axis=-1))
    return m + jnp.log(s) - target
