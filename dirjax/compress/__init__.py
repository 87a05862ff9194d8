"""Compress a token-embedding table `[V, d]`: `compress(table, rate=10, method="ae")`.

This package file only registers methods and dispatches to them; each method lives beside
its own code (svd.py, train.py, quantize.py). `METHODS` maps a name to a `Method`:

    fn(table, *, rate, rank, **options) -> embedding module   (exactly one of rate / rank)
    low_rank    its rate is a rank (V*k + k*d + d numbers): checked before any work
    check       options -> None, raising ConfigError on an unknown or bad option, so a
                config is judged before a model is loaded
    needs       calibration arrays it takes ("counts" [V], "hidden" [N, d]; see calib.py)

The function returns an embedding module (`dirjax.embedding`) with `storage_bytes()`;
`compress` measures its reconstruction and stores the figures in its `.metrics` dict.
Another method is one `register_method("name", fn, ...)` away.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dirjax.compress.lowrank import CompressedEmbedding
from dirjax.compress.metrics import reconstruction_metrics
from dirjax.compress.rate import check_rate, rank_for_rate, rate_for_rank, resolve_rank
from dirjax.embedding import Described
from dirjax.errors import ConfigError, DataError


@dataclass(frozen=True)
class Method:
    fn: Callable
    low_rank: bool = False
    check: Callable | None = None
    needs: tuple[str, ...] = ()


def _lazy(module: str, name: str) -> Callable:
    """`dirjax.compress.<module>.<name>`, imported on first call (keeps `import dirjax` light)."""
    def call(*args, **kw):
        return getattr(importlib.import_module(f"dirjax.compress.{module}"), name)(*args, **kw)
    call.__name__ = name
    return call


METHODS: dict[str, Method] = {
    "svd": Method(_lazy("svd", "svd_method"), low_rank=True, check=_lazy("svd", "check_options")),
    "ae": Method(_lazy("train", "ae_method"), low_rank=True, check=_lazy("train", "check_options")),
    # the quantisers: rate in packed bytes, no rank
    "quant": Method(_lazy("quantize", "quant_method"), check=_lazy("quantize", "check_quant")),
    "quant_freq": Method(_lazy("quantize", "quant_freq_method"),
                         check=_lazy("quantize", "check_quant_freq"), needs=("counts",)),
    "quant_gptq": Method(_lazy("quantize", "quant_gptq_method"),
                         check=_lazy("quantize", "check_quant_gptq"), needs=("counts", "hidden")),
    # tiered vector codes, norm apart, LDLQ + codebook refinement on calibration (vq.py)
    "vq": Method(_lazy("vq", "vq_method"), check=_lazy("vq", "check_options"),
                 needs=("counts", "hidden")),
}


def register_method(name: str, fn: Callable, *, low_rank: bool = False,
                    check: Callable | None = None, needs: tuple[str, ...] = ()) -> None:
    """Make `compress(..., method=name)` call `fn(table, rate=..., rank=..., **options)`."""
    METHODS[name] = Method(fn, low_rank, check, tuple(needs))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_options(name: str, options: dict) -> None:
    """ConfigError for an unknown method, or an unknown / bad option of a known one."""
    method = get_method(name)
    if method.check is not None:
        method.check(dict(options))


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


__all__ = ["CompressedEmbedding", "METHODS", "Method", "check_options", "check_table",
           "compress", "get_method", "rank_for_rate", "rate_for_rank", "reconstruction_metrics",
           "register_method"]
# save_compressed / load_compressed import orbax: re-exported lazily below.


def __getattr__(name):
    if name in ("save_compressed", "load_compressed"):
        from dirjax.compress import store
        return getattr(store, name)
    raise AttributeError(name)
