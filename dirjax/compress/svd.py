"""Truncated SVD of a table: codes = U_k S_k `[V, k]`, decoder = V_k^T `[k, d]`, bias 0: the
`svd` method, the baseline every other method is measured against.

A baseline must be the best version of itself, so every table that fits gets the exact SVD
(`jnp.linalg.svd`, full_matrices=False: 2-3 s for SmolLM2's 49152 x 576 on 2 CPU cores); above
`EXACT_MAX_ELEMENTS` (1 GiB of fp32) the randomized SVD of Halko, Martinsson & Tropp (2011,
alg. 4.4) with `n_iter` power iterations, re-orthonormalised each half step (Gram eigh, not QR: see
`orthonormalize`), and a fixed key. The randomized one reads the table in place: no
copy of `[V, d]` is made (262144 x 2048 at rank 203: peak +0.5 GiB over the 2 GiB
table, the `[V, l]` panels).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from dirjax.compress.lowrank import CompressedEmbedding
from dirjax.compress.rate import resolve_rank
from dirjax.errors import ConfigError

# Exact up to 2^28 numbers (1 GiB of fp32: Gemma 3's 262144 x 640 is 2^27.3); the randomized
# one beyond, where U alone would not fit comfortably. Each result records which was used.
EXACT_MAX_ELEMENTS = 1 << 28
OPTIONS = ("exact", "n_iter", "oversample", "seed")


@partial(jax.jit, static_argnames=("rank",))
def exact_svd(table, rank: int):
    """`[V, d]` -> codes `[V, k]`, weight `[k, d]` from the exact SVD."""
    u, s, vt = jnp.linalg.svd(table.astype(jnp.float32), full_matrices=False)
    return u[:, :rank] * s[:rank], vt[:rank]


@partial(jax.jit, static_argnames=("rank", "n_iter", "oversample"))
def randomized_svd(table, key, rank: int, n_iter: int = 4, oversample: int = 10):
    """`[V, d]` -> codes `[V, k]`, weight `[k, d]`, by a randomized range finder.

    Cost: (2 * n_iter + 2) passes over the table, each a `[V, d] x [d, l]` product,
    l = k + oversample.
    """
    a = table.astype(jnp.float32)
    width = min(rank + oversample, min(a.shape))
    q = orthonormalize(a @ jax.random.normal(key, (a.shape[1], width), jnp.float32))
    for _ in range(n_iter):
        # re-orthonormalising after every product keeps the small singular directions from
        # being rounded away
        q = orthonormalize(a @ orthonormalize(a.T @ q))
    # SVD of the small b = q^T a [l, d] through the eigh of b b^T [l, l]; the top k of l
    # singular values are far from fp32's floor, so squaring them loses nothing that matters
    b = q.T @ a
    w, ub = jnp.linalg.eigh(b @ b.T)
    w, ub = w[::-1][:rank], ub[:, ::-1][:, :rank]  # descending
    s = jnp.sqrt(jnp.maximum(w, 0.0))
    vt = (ub.T @ b) / jnp.maximum(s, 1e-30)[:, None]  # [k, d]
    return (q @ ub) * s, vt


def orthonormalize(y):
    """`[n, l]` (n > l) -> orthonormal `[n, l]` with the same span, by two rounds of
    Gram-matrix eigh (as CholeskyQR2). XLA's CPU QR is slow (0.8 s for 576 x 66, 2 s for
    49152 x 66); this is a few `[n, l]` products."""
    for _ in range(2):
        w, v = jnp.linalg.eigh(y.T @ y)
        # directions at fp32 noise level are kept (scaled up) so the width stays l; the
        # second round makes them orthogonal to the others
        w = jnp.maximum(w, w[-1] * 1e-12 + 1e-30)
        y = y @ (v * jax.lax.rsqrt(w))
    return y


def svd_factors(table, rank: int, *, exact=None, n_iter: int = 4, oversample: int = 10,
                seed: int = 0, exact_max_elements: int = EXACT_MAX_ELEMENTS):
    """Rank-`rank` factors of `table [V, d]`: (codes `[V, k]`, weight `[k, d]`).

    exact=None picks the exact SVD for tables of at most `exact_max_elements` numbers
    (`solver(...)` says which one a table gets).
    """
    if solver(table.shape, exact, exact_max_elements) == "exact":
        return exact_svd(table, rank)
    return randomized_svd(table, jax.random.PRNGKey(seed), rank, n_iter, oversample)


def solver(shape, exact=None, exact_max_elements: int = EXACT_MAX_ELEMENTS) -> str:
    """"exact" or "randomized": the SVD a `[V, d]` table gets."""
    if exact is None:
        exact = shape[0] * shape[1] <= exact_max_elements
    return "exact" if exact else "randomized"


def check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) for method 'svd': {', '.join(unknown)} "
                          f"(known: {', '.join(OPTIONS)})")
    if not (options.get("exact") is None or isinstance(options["exact"], bool)):  # 1 == True
        raise ConfigError(f"svd option exact must be true, false or None, got {options['exact']!r}")
    for name in ("n_iter", "oversample", "seed"):
        value = options.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"svd option {name} must be a non-negative integer, got {value!r}")


def svd_method(table, *, rate=None, rank=None, n_iter: int = 4, oversample: int = 10,
               exact=None, seed: int = 0) -> CompressedEmbedding:
    """Truncated SVD: codes = U_k S_k, weight = V_k^T, bias 0; meta records the solver."""
    k = resolve_rank(*table.shape, rate=rate, rank=rank)
    used = solver(table.shape, exact)
    codes, weight = svd_factors(table, k, exact=used == "exact", n_iter=n_iter,
                                oversample=oversample, seed=seed)
    meta = {"solver": used} if used == "exact" else {"solver": used, "n_iter": n_iter,
                                                     "oversample": oversample, "seed": seed}
    return CompressedEmbedding(codes, weight, method="svd", meta=meta)
