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
    output head (`model.out_embedding`). chunk=None (or >= V): the full-logit path.

    h may be bf16 (compute_dtype): the logits come back in fp32 (`attend_chunk`), and the
    log-sum-exp, the target's logit and the loss are fp32, so bf16 rounds only what goes into
    the head's matmuls."""
    emb, cap = model.out_embedding, softcap(model)

    def capped(logits):
        logits = logits.astype(jnp.float32)
        return logits if not cap else jnp.tanh(logits / cap) * cap

    v = emb.vocab_size
    if chunk is None or chunk >= v:
        logits = capped(attend_chunk(emb, h, 0, v))
        return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
            logits, targets[..., None], axis=-1)[..., 0]

    def fold(carry, logits):
        """(running max, sum of exp(logit - max)) `[...]` each, with one slice's logits."""
        m, s = carry
        m_new = jnp.maximum(m, logits.max(axis=-1))
        return m_new, s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[..., None]).sum(axis=-1)

    # whole slices in a scan, then the remainder as one static slice: no slice overlaps
    # another, so no column is scored twice or needs masking
    whole, rest = divmod(v, chunk)

    # a quantised head's h R, once for all slices (`frame`)
    frame = emb.frame(h) if hasattr(emb, "frame") else None

    def step(carry, start):
        return fold(carry, capped(attend_chunk(emb, h, start, chunk, frame))), None

    init = (jnp.full(h.shape[:-1], -jnp.inf, jnp.float32), jnp.zeros(h.shape[:-1], jnp.float32))
    carry, _ = jax.lax.scan(step, init, jnp.arange(whole) * chunk)
    if rest:
        carry = fold(carry, capped(attend_chunk(emb, h, v - rest, rest, frame)))
    m, s = carry
    # the target's logit from its row, rounded as the head's operands are, summed in fp32
    row = emb(targets).astype(h.dtype).astype(jnp.float32)
    return m + jnp.log(s) - capped((h.astype(jnp.float32) * row).sum(axis=-1))
