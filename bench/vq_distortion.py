"""Codebook shapes at 2 bits per entry on SmolLM2-135M's table: mean squared error per entry.

The vectors are what `vq` codes: the centred table `[V, d]`, rotated (seed 0), each row scaled
to unit variance per entry (u = y sqrt(d) / |y|). Books compared on the same 1,500 held rows:
  scalar (1, 2)              2-bit k-means per entry (Lloyd-Max)
  k-means (4, 8), (6, 12)    learnt books over groups of 4 / 6 (vq's 2-bit tiers: defaults / low12)
  residual 2 x (8, 8)        two 256-entry books over groups of 8, the second on the first's
                             residual (greedy RVQ, the additive shape at 16 bits per 8 entries)
  E8 + 1/4, 2^16 points      the 65,536 smallest points of the shifted E8 lattice, one global
                             scale (the set QuIP#'s E8P codebook draws from; no stored book)
and the centred table's energy in its top-r singular directions (low rank + a coded residual).

    .venv/bin/python bench/vq_distortion.py

Measured 2026-12-03 (2-core CPU, ~6 min): scalar 0.1173, k-means (4,8) 0.0981, k-means (6,12)
0.0936, residual 2x(8,8) 0.1062, E8 + 1/4 0.0906 (scale 1.0); top-8 / 16 / 32 / 64 singular
directions hold 17.8 / 20.5 / 24.7 / 32.0% of the energy.
"""
from __future__ import annotations

import numpy as np


def directions(table: np.ndarray, seed: int = 0) -> np.ndarray:
    """vq's u `[V, d]`: centred, rotated, rows at unit variance per entry."""
    from dirjax.compress.codec import random_rotation
    y = (table - table.mean(0)) @ random_rotation(table.shape[1], seed)
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    return (y * np.sqrt(table.shape[1]) / norms).astype(np.float32)


def e8_points(n: int = 1 << 16, shift: float = 0.25) -> np.ndarray:
    """The n smallest-norm points `[n, 8]` of E8 + shift (E8 = D8 and D8 + 1/2, D8 = even-sum
    integer vectors). Coordinates up to 4 in size cover every point with |x|^2 < 14."""
    def d8(lo, hi):
        a = np.array(np.meshgrid(*[np.arange(lo, hi + 1, dtype=np.int8)] * 8, indexing="ij"))
        a = a.reshape(8, -1).T
        return a[a.astype(np.int32).sum(1) % 2 == 0].astype(np.float32)
    pts = np.concatenate([d8(-4, 4), d8(-4, 3) + 0.5]) + shift
    pts = pts[np.sum(pts ** 2, 1) < 14]
    return pts[np.argsort(np.sum(pts ** 2, 1), kind="stable")[:n]]


def main():
    import dirjax
    from dirjax.compress.kmeans import assign, kmeans

    model, _ = dirjax.load_model("smollm2-135m")
    table = np.asarray(model.embedding.table(), np.float32)
    u = directions(table)
    held = u[np.random.default_rng(0).choice(len(u), 1500, replace=False)]

    def mse(x, book):
        return float(assign(x, book)[1].sum() / x.size)

    print("| book | bits per entry | stored book bytes | MSE per entry |")
    print("|---|---|---|---|")
    for g, b in ((1, 2), (4, 8), (6, 12)):
        book = kmeans(u.reshape(-1, g), 2 ** b, seed=1, iters=20)
        print(f"| k-means ({g}, {b}) | 2 | {2 ** b * g * 2:,} | "
              f"{mse(held.reshape(-1, g), book):.4f} |", flush=True)
    x8, h8 = u.reshape(-1, 8), held.reshape(-1, 8)
    b1 = kmeans(x8, 256, seed=2, iters=20)
    b2 = kmeans(x8 - b1[assign(x8, b1)[0]], 256, seed=3, iters=20)
    print(f"| residual 2 x (8, 8) | 2 | {2 * 256 * 8 * 2:,} | "
          f"{mse(h8 - b1[assign(h8, b1)[0]], b2):.4f} |", flush=True)
    pts = e8_points()
    best = min((mse(h8, pts * s), s) for s in (0.9, 0.95, 1.0, 1.05))
    print(f"| E8 + 1/4, 2^16 points (scale {best[1]:g}) | 2 | 0 | {best[0]:.4f} |", flush=True)
    sv = np.linalg.svd(table - table.mean(0), compute_uv=False) ** 2
    for r in (8, 16, 32, 64):
        print(f"top {r} singular directions: {sv[:r].sum() / sv.sum():.3f} of the energy "
              f"({2 * r} bytes a row in fp16 against {table.shape[1] // 4} at 2 bits per entry)")


if __name__ == "__main__":
    main()
