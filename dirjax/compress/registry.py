"""The method registry: `METHODS` maps a name to a `Method`, the one place where a method,
its options' check, its calibration needs and its embedding class are known.

    fn(table, *, rate, rank, **options) -> embedding module   (exactly one of rate / rank)
    module      the class of that embedding module (or "package.module:Class", imported on
                first use): how a saved one (compress/store.py) is read back, by the class
                name its meta.json holds
    low_rank    its rate is a rank (V*k + k*d + d numbers): checked before any work
    check       options -> None, raising ConfigError on an unknown or bad option, so a
                config is judged before a model is loaded
    needs       calibration arrays it takes ("counts" [V], "hidden" [N, d]; see calib.py)

Its own module (not the package file) so that store.py can look classes up here while the
package re-exports store's functions, without an import cycle.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from dirjax.compress.lowrank import CompressedEmbedding
from dirjax.errors import ConfigError, WeightsError


@dataclass(frozen=True)
class Method:
    fn: Callable
    low_rank: bool = False
    check: Callable | None = None
    needs: tuple[str, ...] = ()
    module: type | str | None = None     # a class, or "package.module:Class" (imported on use)

    @property
    def module_name(self) -> str | None:
        """The class name of its embedding module, without importing it."""
        if self.module is None or isinstance(self.module, type):
            return getattr(self.module, "__name__", None)
        return self.module.rpartition(":")[2]

    def module_class(self) -> type:
        if isinstance(self.module, str):
            path, _, name = self.module.partition(":")
            return getattr(importlib.import_module(path), name)
        return self.module


def _lazy(module: str, name: str) -> Callable:
    """`dirjax.compress.<module>.<name>`, imported on first call: the methods' modules import
    optax, orbax and big jitted code, which `import dirjax` (and a config check) should not."""
    def call(*args, **kw):
        return getattr(importlib.import_module(f"dirjax.compress.{module}"), name)(*args, **kw)
    call.__name__ = name
    return call


QUANTIZED = "dirjax.compress.quantize:QuantizedEmbedding"


METHODS: dict[str, Method] = {
    "svd": Method(_lazy("svd", "svd_method"), low_rank=True, check=_lazy("svd", "check_options"),
                  module=CompressedEmbedding),
    "ae": Method(_lazy("train", "ae_method"), low_rank=True, check=_lazy("train", "check_options"),
                 module=CompressedEmbedding),
    # the quantisers: rate in packed bytes, no rank
    "quant": Method(_lazy("quantize", "quant_method"), check=_lazy("quantize", "check_quant"),
                    module=QUANTIZED),
    "quant_freq": Method(_lazy("quantize", "quant_freq_method"),
                         check=_lazy("quantize", "check_quant_freq"), needs=("counts",),
                         module=QUANTIZED),
    "quant_gptq": Method(_lazy("quantize", "quant_gptq_method"),
                         check=_lazy("quantize", "check_quant_gptq"), needs=("counts", "hidden"),
                         module=QUANTIZED),
    # tiered vector codes, norm apart, LDLQ + codebook refinement on calibration (vq.py)
    "vq": Method(_lazy("vq", "vq_method"), check=_lazy("vq", "check_options"),
                 needs=("counts", "hidden"), module="dirjax.compress.vq:VQEmbedding"),
}


def register_method(name: str, fn: Callable, *, module: type | str | None = None,
                    low_rank: bool = False, check: Callable | None = None,
                    needs: tuple[str, ...] = ()) -> None:
    """Make `compress(..., method=name)` call `fn(table, rate=..., rank=..., **options)`, which
    returns a `module` (a `dirjax.embedding.Described` with `export()` / `restore()`; a method
    registered without one compresses, but its results cannot be saved nor reloaded, so a
    config cannot run it)."""
    METHODS[name] = Method(fn, low_rank, check, tuple(needs), module)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def embedding_class(name: str, method: str | None = None) -> type:
    """The embedding class registered under the class name `name` (a saved meta.json's
    "class"), `method`'s own first; WeightsError when no registered method names it."""
    methods = ([METHODS[method]] if method in METHODS else []) + list(METHODS.values())
    for m in methods:
        if m.module is not None and m.module_name == name:
            return m.module_class()
    raise WeightsError(f"embedding class {name!r} (method {method!r}) is not registered: "
                       f"register_method({method!r}, fn, module={name}) before loading it")


def check_savable(emb) -> None:
    """ConfigError unless `emb` can be read back: its class is its method's registered one."""
    method = getattr(emb, "method", None)
    cls = type(emb).__name__
    try:
        found = embedding_class(cls, method)
    except WeightsError:
        found = None
    if found is not type(emb):
        raise ConfigError(f"method {method!r} gave a {cls}, which no method registers as its "
                          f"module: register_method({method!r}, fn, module={cls}) to save it")


def check_options(name: str, options: dict) -> None:
    """ConfigError for an unknown method, or an unknown / bad option of a known one."""
    method = get_method(name)
    if method.check is not None:
        method.check(dict(options))
