"""How close a reconstruction is to its table, row by row and as a whole.

    cos_mean, cos_p5, cos_min   cosine of each reconstructed row with its original row
    rel_frobenius               ||T - R||_F / ||T||_F
    rel_l2_mean                 mean over rows of ||t_i - r_i|| / ||t_i||

The reconstruction is built in row chunks, so a 256k-row table never exists twice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CHUNK_ROWS = 8192
EPS = 1e-12


@jax.jit
def _row_stats(t, r):
    """t, r `[n, d]` -> (cos [n], rel_l2 [n], sum |t-r|^2, sum |t|^2)."""
    t, r = t.astype(jnp.float32), r.astype(jnp.float32)
    tn, rn = jnp.linalg.norm(t, axis=-1), jnp.linalg.norm(r, axis=-1)
    err = jnp.sum((t - r) ** 2, axis=-1)
    cos = jnp.sum(t * r, axis=-1) / jnp.maximum(tn * rn, EPS)
    return cos, jnp.sqrt(err) / jnp.maximum(tn, EPS), jnp.sum(err), jnp.sum(tn ** 2)


def reconstruction_metrics(table, recon) -> dict:
    """Metrics of `recon` against `table [V, d]`.

    `recon` is a `[V, d]` array, or any embedding module (called on row ids chunk by chunk,
    so a low-rank embedding is never expanded to `[V, d]` at once).
    """
    v = table.shape[0]
    rows = recon.shape[0] if hasattr(recon, "shape") else recon.vocab_size
    assert rows == v, (rows, v)
    cos, rel, err, norm = [], [], 0.0, 0.0
    for lo in range(0, v, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, v)
        r = recon[lo:hi] if hasattr(recon, "shape") else recon(jnp.arange(lo, hi)[None])[0]
        c, l2, e, n = _row_stats(jnp.asarray(table[lo:hi]), r)
        cos.append(np.asarray(c)), rel.append(np.asarray(l2))
        err, norm = err + float(e), norm + float(n)
    cos, rel = np.concatenate(cos), np.concatenate(rel)
    return {
        "cos_mean": float(cos.mean()),
        "cos_p5": float(np.percentile(cos, 5)),
        "cos_min": float(cos.min()),
        "rel_frobenius": float(np.sqrt(err / max(norm, EPS))),
        "rel_l2_mean": float(rel.mean()),
    }
