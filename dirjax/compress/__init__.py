"""Compress a token-embedding table `[V, d]`: `compress(table, rate=10, method="ae")`.

This package file only dispatches to the registered methods (`METHODS`, registry.py: a
name -> its function, option check, calibration needs and embedding class); each method lives
beside its own code (svd.py, train.py, quantize.py, vq.py).

The function returns an embedding module (`dirjax.embedding`) with `storage_bytes()`;
`compress` measures its reconstruction and stores the figures in its `.metrics` dict.
Another method is one `register_method("name", fn, module=MyEmbedding, ...)` away: then the
cache, `save_compressed` / `load_compressed` and `save_model` / `load_model` know it too.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from dirjax.compress.lowrank import CompressedEmbedding
from dirjax.compress.metrics import reconstruction_metrics
from dirjax.compress.rate import check_rate, rank_for_rate, rate_for_rank, resolve_rank
from dirjax.compress.registry import (
    METHODS,
    Method,
    check_options,
    check_savable,
    embedding_class,
    get_method,
    register_method,
)
from dirjax.compress.store import load_compressed, save_compressed
from dirjax.embedding import Described
from dirjax.errors import ConfigError, DataError


def check_table(table) -> None:
    """DataError unless `table` is a non-empty, finite 2-D float array whose row norms fit fp32."""
    shape = getattr(table, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"table must be a 2-D array [V, d], got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise DataError(f"table is empty: shape {tuple(shape)}")
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise DataError(f"table must hold floats, got {table.dtype}")
    # max |t| is NaN or Inf exactly when some entry is; a plain reduction, so no [V, d] temporary
    biggest = float(_max_abs(table))
    if not np.isfinite(biggest):
        bad = int(np.sum(~np.isfinite(np.asarray(table))))
        raise DataError(f"table holds {bad} NaN/Inf value(s)")
    # every method sums squares of a row in fp32: d * max^2 must stay below fp32's 3.4e38
    if biggest ** 2 * shape[1] > 1e37:
        raise DataError(f"table values up to {biggest:.3g} overflow fp32 arithmetic "
                        f"(squared row norms); rescale the table")


@jax.jit
def _max_abs(t):
    return jnp.max(jnp.abs(t))


def compress(table, *, rate=None, rank=None, method: str = "ae", metrics: bool = True,
             **options):
    """Compress `table [V, d]` to about `rate` (or to rank `rank`) with `method`.

    Returns the method's embedding module (a `CompressedEmbedding` for "svd" and "ae") with
    its reconstruction figures in `.metrics` (unless metrics=False). Errors (ConfigError,
    DataError) come before any work and leave nothing written.
    """
    m = get_method(method)
    if (rate is None) == (rank is None):
        raise ConfigError("give exactly one of rate and rank")
    if rate is not None:
        rate = check_rate(rate)
    if not isinstance(table, jax.Array):
        table = np.asarray(table)
    check_table(table)
    if m.low_rank:
        rank = resolve_rank(*table.shape, rate=rate, rank=rank)   # fail before any work
        rate = None
    elif rank is not None:
        raise ConfigError(f"method {method} takes a rate (stored bytes), not a rank")
    if m.check is not None:
        m.check({k: v for k, v in options.items() if k not in m.needs})
    emb = m.fn(table, rate=rate, rank=rank, **options)
    if isinstance(emb, Described):
        emb.method = method
    if metrics:
        got = reconstruction_metrics(table, emb)
        if not all(math.isfinite(v) for v in got.values()):
            raise DataError(f"method {method} gave a non-finite reconstruction of the table")
        emb.metrics = {**getattr(emb, "metrics", {}), **got}
    return emb


__all__ = ["CompressedEmbedding", "METHODS", "Method", "check_options", "check_savable",
           "check_table", "compress", "embedding_class", "get_method", "load_compressed",
           "rank_for_rate", "rate_for_rank", "reconstruction_metrics", "register_method",
           "save_compressed"]
