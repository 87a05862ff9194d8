"""Compression rate <-> rank of a low-rank table, counted on stored numbers.

A `[V, d]` table stored as codes `[V, k]`, decoder weight `[k, d]` and bias `[d]` keeps
V*k + k*d + d numbers instead of V*d, so

    rate = V*d / (V*k + k*d + d).
"""
from __future__ import annotations

import math
import numbers

from dirjax.errors import ConfigError


def rate_for_rank(vocab_size: int, features: int, rank: int) -> float:
    """Compression rate of a rank-`rank` factorisation of a `[vocab_size, features]` table."""
    check_rank(vocab_size, features, rank)
    v, d, k = vocab_size, features, rank
    return v * d / (v * k + k * d + d)


def rank_for_rate(vocab_size: int, features: int, rate: float) -> int:
    """The largest rank k whose rate is at least `rate`: k = floor((V*d/rate - d) / (V + d))."""
    rate = check_rate(rate, above=0.0)
    v, d = vocab_size, features
    # 1e-9: the rate of rank k itself, rate_for_rank(k), maps back to k
    k = math.floor((v * d / rate - d) / (v + d) + 1e-9)
    if k < 1:
        raise ConfigError(f"rate {rate:g} leaves rank {k} < 1 for a {v}x{d} table "
                          f"(the highest rate is {rate_for_rank(v, d, 1):.4g})")
    if k >= d:
        raise ConfigError(f"rate {rate:g} gives rank {k} >= {d} features: no compression "
                          f"(the lowest rate is {rate_for_rank(v, d, d - 1):.4g})")
    return k


def check_rate(rate, above: float = 1.0) -> float:
    """`rate` as a float if it is a finite real number > `above` (numpy scalars too), else
    ConfigError. A compression rate is > 1: rate 1 stores the table as it is."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate) \
            or rate <= above:
        raise ConfigError(f"rate must be a finite number > {above:g}, got {rate!r}")
    return float(rate)


def check_rank(vocab_size: int, features: int, rank) -> int:
    """`rank` as an int if 1 <= rank < features (numpy integers too), else ConfigError."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ConfigError(f"rank must be an integer, got {rank!r}")
    rank = int(rank)
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
