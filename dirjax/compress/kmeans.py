"""Vector codes in JAX: nearest codewords, weighted k-means (Lloyd) and LDLQ rounding.

Vectors are processed in chunks of CHUNK (`jax.lax.map`), so the `[n, K]` distances of a
262,144-row table's groups never exist at once.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dirjax.compress.codec import inverse_cholesky

CHUNK = 8192           # vectors per k-means assignment chunk (bounds the [chunk, K] distances)


# ----------------------------------------------------------------------------- k-means
def _nearest(x, c):
    """x `[n, g]`, c `[K, g]` -> (index [n] int32, squared error [n])."""
    dist = jnp.sum(c * c, 1)[None] - 2 * x @ c.T                       # [n, K]
    i = jnp.argmin(dist, 1).astype(jnp.int32)
    return i, jnp.sum((x - c[i]) ** 2, 1)


@jax.jit
def _assign_chunks(x, c):
    """x `[n_chunks, CHUNK, g]` -> index, error `[n_chunks, CHUNK]` (one chunk at a time)."""
    return jax.lax.map(lambda xb: _nearest(xb, c), x)


def _chunked(x: np.ndarray, fill=0.0):
    """x `[n, ...]` -> (`[n_chunks, CHUNK, ...]` padded with `fill`, n)."""
    n = x.shape[0]
    pad = (-n) % CHUNK
    xp = np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)])
    return xp.reshape(-1, CHUNK, *x.shape[1:]), n


def assign(x: np.ndarray, c: np.ndarray):
    """Nearest codeword of each row of x `[n, g]` in c `[K, g]`: (index [n], error [n])."""
    xc, n = _chunked(np.asarray(x, np.float32))
    i, e = _assign_chunks(jnp.asarray(xc), jnp.asarray(c, jnp.float32))
    return np.asarray(i).reshape(-1)[:n], np.asarray(e).reshape(-1)[:n]


@partial(jax.jit, static_argnames=("iters",))
def _lloyd(x, w, c, iters: int):
    """`iters` weighted Lloyd steps. x `[n_chunks, CHUNK, g]`, w `[n_chunks, CHUNK]`."""
    k, g = c.shape

    def step(_, c):
        i, _ = jax.lax.map(lambda xb: _nearest(xb, c), x)
        i, xf, wf = i.reshape(-1), x.reshape(-1, g), w.reshape(-1)
        s = jax.ops.segment_sum(xf * wf[:, None], i, k)
        n = jax.ops.segment_sum(wf, i, k)
        return jnp.where(n[:, None] > 0, s / jnp.maximum(n, 1e-30)[:, None], c)  # empty: keep
    return jax.lax.fori_loop(0, iters, step, c)


def kmeans(x: np.ndarray, k: int, *, seed: int, iters: int = 20, weights=None, init=None,
           max_train: int = 1 << 17) -> np.ndarray:
    """Codebook `[k, g]` (fp16-exact float32) by weighted k-means on x `[n, g]`.

    Trains on at most `max_train` vectors drawn with the seed (all of them when fewer);
    init: the given codebook, else k distinct training vectors.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    w = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
    if len(x) > max_train:
        pick = rng.choice(len(x), max_train, replace=False)
        x, w = x[pick], w[pick]
    if init is None:
        init = x[rng.choice(len(x), k, replace=len(x) < k)]
        init = init + 1e-3 * rng.standard_normal(init.shape).astype(np.float32) * (len(x) < k)
    xc, _ = _chunked(x)
    wc, _ = _chunked(w[:, None])
    c = _lloyd(jnp.asarray(xc), jnp.asarray(wc[..., 0]), jnp.asarray(init, jnp.float32), iters)
    return np.asarray(c).astype(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------- LDLQ
def ldlq_matrices(hess: np.ndarray, g: int, damp: float = 0.01) -> np.ndarray:
    """`[d/g, g, d]`: for group j (columns B), A_j = U_BB^-1 U_B: with H^-1 = U^T U (U upper).

    Coding group j with error E `[n, g]` updates the rows as W -= E @ A_j: the OBS/GPTQ update
    of the columns after B for a block coded jointly (columns before B are zero in A_j)."""
    d = hess.shape[0]
    u = inverse_cholesky(hess, damp)
    out = np.zeros((d // g, g, d))
    for j in range(d // g):
        b = slice(j * g, (j + 1) * g)
        out[j] = np.linalg.solve(u[b, b], u[b])
    return out.astype(np.float32)


@jax.jit
def _ldlq(w, c, a):
    """Sequential vector rounding: w `[n, d]`, c `[K, g]`, a `[M, g, d]` -> codes `[n, M]`."""
    m, g, _ = a.shape

    def body(j, carry):
        w, codes, seen = carry
        blk = jax.lax.dynamic_slice_in_dim(w, j * g, g, axis=1)
        i, _ = _nearest(blk, c)
        w = w - (blk - c[i]) @ a[j]
        seen = jax.lax.dynamic_update_slice_in_dim(seen, blk, j * g, axis=1)
        return w, codes.at[:, j].set(i), seen
    _, codes, seen = jax.lax.fori_loop(
        0, m, body, (w, jnp.zeros((w.shape[0], m), jnp.int32), jnp.zeros_like(w)))
    return codes, seen


def ldlq(w: np.ndarray, c: np.ndarray, a: np.ndarray, rows: int = 8192):
    """`_ldlq` over row chunks (rows are independent): (codes `[n, d/g]` int32, the targets
    each group was rounded from `[n, d]`, i.e. the rows with earlier errors fed back)."""
    out = [_ldlq(jnp.asarray(w[i:i + rows]), jnp.asarray(c), jnp.asarray(a))
           for i in range(0, len(w), rows)]
    if not out:
        return np.zeros((0, a.shape[0]), np.int32), np.zeros((0, w.shape[1]), np.float32)
    return (np.concatenate([np.asarray(o[0]) for o in out]),
            np.concatenate([np.asarray(o[1]) for o in out]))
