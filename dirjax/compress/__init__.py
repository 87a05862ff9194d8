"""Compress a token-embedding table `[V, d]`: `compress(table, rate=10, method="ae")`.

Methods live in `METHODS`, name -> function `(table, *, rate, rank, **options) -> embedding`
(exactly one of rate / rank is set; the table is already checked: 2-D, non-empty, finite).
The function returns an embedding module (`dirjax.embedding`) with `storage_bytes()`;
`compress` measures its reconstruction and stores the figures in its `.metrics` dict.
Another method is one `register_method("name", fn)` away.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from dirjax.compress.metrics import reconstruction_metrics
from dirjax.compress.rate import rank_for_rate, rate_for_rank, resolve_rank
from dirjax.embedding import Described, LowRankEmbedding, compression_rate
from dirjax.errors import ConfigError, DataError


class CompressedEmbedding(LowRankEmbedding, Described):
    """A `LowRankEmbedding` (codes `[V, k]` @ weight `[k, d]` + bias `[d]`) that remembers how
    it was made: `method`, `metrics` (see `reconstruction_metrics`) and free `meta`data."""

    def __init__(self, codes, weight, bias=None, *, method: str = "svd",
                 metrics: dict | None = None, meta: dict | None = None):
        super().__init__(codes, weight, bias)
        self.method = method
        self.metrics = metrics
        self.meta = meta

    def export(self) -> tuple[dict, dict]:
        """(arrays, static fields) for `store.save_compressed`."""
        arrays = {n: np.asarray(getattr(self, n)[...]) for n in ("codes", "weight", "bias")}
        return arrays, {"rank": self.rank}

    @classmethod
    def restore(cls, arrays: dict, static: dict, **described) -> "CompressedEmbedding":
        return cls(arrays["codes"], arrays["weight"], arrays["bias"], **described)

    @property
    def rate(self) -> float:
        """V*d / (V*k + k*d + d): the fp32 table's size over what is stored."""
        return compression_rate(self)

    def reconstruct(self) -> jax.Array:
        """`[V, d]`."""
        return self.table()


def check_table(table) -> None:
    """DataError unless `table` is a non-empty, finite 2-D float array."""
    shape = getattr(table, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"table must be a 2-D array [V, d], got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise DataError(f"table is empty: shape {tuple(shape)}")
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise DataError(f"table must hold floats, got {table.dtype}")
    # max |t| is NaN or Inf exactly when some entry is; a plain reduction, so no [V, d] temporary
    if not np.isfinite(float(_max_abs(table))):
        bad = int(np.sum(~np.isfinite(np.asarray(table))))
        raise DataError(f"table holds {bad} NaN/Inf value(s)")


@jax.jit
def _max_abs(t):
    return jnp.max(jnp.abs(t))


def svd_method(table, *, rate=None, rank=None, n_iter: int = 4, oversample: int = 10,
               exact=None, seed: int = 0) -> CompressedEmbedding:
    """Truncated SVD: codes = U_k S_k, weight = V_k^T, bias 0 (see `svd.svd_factors`)."""
    from dirjax.compress.svd import svd_factors
    k = resolve_rank(*table.shape, rate=rate, rank=rank)
    codes, weight = svd_factors(table, k, exact=exact, n_iter=n_iter, oversample=oversample,
                                seed=seed)
    return CompressedEmbedding(codes, weight, method="svd",
                               meta={"exact": exact, "n_iter": n_iter, "seed": seed})


def ae_method(table, *, rate=None, rank=None, **options) -> CompressedEmbedding:
    """The direction AutoEncoder (see `train.AEOptions` for the options and their defaults)."""
    from dirjax.compress.svd import svd_factors
    from dirjax.compress.train import AEOptions, train_autoencoder
    k = resolve_rank(*table.shape, rate=rate, rank=rank)
    opts = AEOptions.from_kwargs(**options)
    svd_init = svd_factors(table, k) if opts.init == "svd" else None
    codes, weight, bias = train_autoencoder(table, k, opts, svd_init=svd_init)
    meta = {"epochs": opts.epochs, "batch_size": opts.batch_size, "seed": opts.seed,
            "init": opts.init, "hidden": list(opts.hidden),
            "final_loss": opts.log[-1]["loss"] if opts.log else None,
            "epochs_run": len(opts.log)}
    return CompressedEmbedding(codes, weight, bias, method="ae", meta=meta)


def _lazy(module: str, name: str):
    """A method defined in `dirjax.compress.<module>`, imported on first use."""
    def method(table, **kw):
        import importlib
        return getattr(importlib.import_module(f"dirjax.compress.{module}"), name)(table, **kw)
    method.__name__ = name
    return method


METHODS = {"svd": svd_method, "ae": ae_method,
           # the quantisers (dirjax/compress/quantize.py): rate in packed bytes, no rank
           "quant": _lazy("quantize", "quant_method"),
           "quant_freq": _lazy("quantize", "quant_freq_method"),
           "quant_gptq": _lazy("quantize", "quant_gptq_method")}
LOW_RANK = {"svd", "ae"}  # methods whose rate is a rank (checked before any work)


def register_method(name: str, fn) -> None:
    """Make `compress(..., method=name)` call `fn(table, rate=..., rank=..., **options)`."""
    METHODS[name] = fn


def compress(table, *, rate=None, rank=None, method: str = "ae", metrics: bool = True,
             **options):
    """Compress `table [V, d]` to about `rate` (or to rank `rank`) with `method`.

    Returns the method's embedding module (a `CompressedEmbedding` for "svd" and "ae") with
    its reconstruction figures in `.metrics` (unless metrics=False). Errors (ConfigError,
    DataError) come before any work and leave nothing written.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    if (rate is None) == (rank is None):
        raise ConfigError("give exactly one of rate and rank")
    if not isinstance(table, jax.Array):
        table = np.asarray(table)
    check_table(table)
    if method in LOW_RANK:
        resolve_rank(*table.shape, rate=rate, rank=rank)  # fail before any work
    emb = METHODS[method](table, rate=rate, rank=rank, **options)
    if isinstance(emb, Described):
        emb.method = method
    if metrics:
        emb.metrics = {**getattr(emb, "metrics", {}), **reconstruction_metrics(table, emb)}
    return emb


__all__ = ["CompressedEmbedding", "METHODS", "compress", "rank_for_rate", "rate_for_rank",
           "reconstruction_metrics", "register_method", "check_table"]
# save_compressed / load_compressed import orbax: re-exported lazily below.


def __getattr__(name):
    if name in ("save_compressed", "load_compressed"):
        from dirjax.compress import store
        return getattr(store, name)
    raise AttributeError(name)
