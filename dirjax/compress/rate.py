"""Compression rate <-> rank of a low-rank table, counted on stored numbers.

A `[V, d]` table stored as codes `[V, k]`, decoder weight `[k, d]` and bias `[d]` keeps
V*k + k*d + d numbers instead of V*d, so

    rate = V*d / (V*k + k*d + d).
"""
from __future__ import annotations

import math

from dirjax.errors import ConfigError


def rate_for_rank(vocab_size: int, features: int, rank: int) -> float:
    """Compression rate of a rank-`rank` factorisation of a `[vocab_size, features]` table."""
    check_rank(vocab_size, features, rank)
    v, d, k = vocab_size, features, rank
    return v * d / (v * k + k * d + d)


def rank_for_rate(vocab_size: int, features: int, rate: float) -> int:
    """The largest rank k whose rate is at least `rate`: k = floor((V*d/rate - d) / (V + d))."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number, got {rate!r}")
    v, d = vocab_size, features
    k = math.floor((v * d / rate - d) / (v + d) + 1e-9)  # 1e-9: rate_for_rank(k) itself maps back to k
    if k < 1:
        raise ConfigError(f"rate {rate:g} leaves rank {k} < 1 for a {v}x{d} table "
                          f"(the highest rate is {rate_for_rank(v, d, 1):.4g})")
    if k >= d:
        raise ConfigError(f"rate {rate:g} gives rank {k} >= {d} features: no compression "
                          f"(the lowest rate is {rate_for_rank(v, d, d - 1):.4g})")
    return k


def check_rank(vocab_size: int, features: int, rank) -> int:
    """`rank` itself if 1 <= rank < features, else ConfigError."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"rank must be an integer, got {rank!r}")
    if rank < 1:
        raise ConfigError(f"rank {rank} < 1")
    if rank >= features:
        raise ConfigError(f"rank {rank} >= {features} features: no compression")
    return rank


def resolve_rank(vocab_size: int, features: int, rate=None, rank=None) -> int:
    """The rank from exactly one of `rate` / `rank`."""
    if (rate is None) == (rank is None):
        raise ConfigError("give exactly one of rate and rank")
    if rank is not None:
        return check_rank(vocab_size, features, rank)
    return rank_for_rate(vocab_size, features, rate)
