"""Token-embedding modules and the swap of one into a model.

Every embedding module answers four calls:
  __call__(ids [B, T] int) -> [B, T, d]   input lookup
  attend(h [..., d]) -> [..., V]           logits of a tied output head, h @ E^T, in h's dtype
  attend_chunk(h, start, size) -> [..., size]   the logits of rows start..start+size-1 only
                                           (start may be traced: a `lax.scan` over vocabulary
                                           slices never builds [..., V]; see evaluate/scoring.py),
                                           in fp32: a scorer's log-sum-exp reads them unrounded
  table() -> [V, d]                        the (reconstructed) table
and reports `storage_bytes()`, the bytes needed to store it, from which the compression
rate against the fp32 table follows: rate = V * d * 4 / storage_bytes.

Models keep their input embedding in `model.embedding` and the embedding whose `attend`
produces LM logits in `model.out_embedding` (the same object when the model ties them,
`model.tied`; None for a model with no LM head).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from flax import nnx

from dirjax.errors import ConfigError, WeightsError

FP32_BYTES = 4


def dot_f32(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b summed in fp32 whatever the operands' dtype -> fp32. bf16 operands run at the
    matrix units' rate (AMX, AVX512-BF16, tensor cores); a bf16 -> bf16 product falls to
    XLA:CPU's slow path, and would round every logit to 8 bits."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)



def linear_dot_f32(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                   **kw):
    """`nnx.Linear(dot_general=...)`'s product summed in fp32 as `dot_f32`, returned in the
    activations' dtype (GPT-2's and BERT's layers)."""
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32, **kw).astype(lhs.dtype)

def slice_rows(x: jax.Array, start, size: int) -> jax.Array:
    """Rows start..start+size-1 of x `[V, ...]` (start may be traced; clamped as
    `lax.dynamic_slice` clamps it). A 16-bit float table is sliced as its bits: XLA:CPU would
    otherwise wrap the slice in converts to fp32 and back, and hoist the first out of the
    scoring scan, copying the whole table to fp32 on every batch."""
    if not (jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2):
        return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    return jax.lax.bitcast_convert_type(jax.lax.dynamic_slice_in_dim(bits, start, size, axis=0),
                                        x.dtype)


class Described:
    """Mixin for compressed embeddings: how it was made (`method`), its reconstruction figures
    (`metrics`) and free `meta`data, kept as JSON strings: NNX puts non-array attributes in the
    graphdef, which jax.jit hashes, and dicts are not hashable. Subclasses implement
    `export() -> (arrays, static)` and `restore(arrays, static, method=, metrics=, meta=)` for
    `dirjax.compress.store`, which finds them by their method's `register_method(module=...)`."""

    method: str = ""

    @property
    def metrics(self) -> dict:
        return json.loads(getattr(self, "_metrics_json", "{}"))

    @metrics.setter
    def metrics(self, value: dict | None) -> None:
        self._metrics_json = json.dumps(dict(value or {}), sort_keys=True)

    @property
    def meta(self) -> dict:
        return json.loads(getattr(self, "_meta_json", "{}"))

    @meta.setter
    def meta(self, value: dict | None) -> None:
        self._meta_json = json.dumps(dict(value or {}), sort_keys=True)


class Embedding(nnx.Module):
    """A dense table `weight [V, d]`."""

    def __init__(self, table: jax.Array):
        self.weight = nnx.Param(jnp.asarray(table))

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)

    def attend(self, h: jax.Array) -> jax.Array:
        return dot_f32(h, self.weight[...].T.astype(h.dtype)).astype(h.dtype)

    def attend_chunk(self, h: jax.Array, start, size: int) -> jax.Array:
        return dot_f32(h, slice_rows(self.weight[...], start, size).T.astype(h.dtype))

    def table(self) -> jax.Array:
        return self.weight[...]

    def num_params(self) -> int:
        return int(self.weight.size)

    def storage_bytes(self) -> int:
        return FP32_BYTES * self.num_params()


class LowRankEmbedding(nnx.Module):
    """codes `[V, k]`, decoder weight `[k, d]`, bias `[d]`: row i = codes[i] @ weight + bias.

    The result of SVD (bias = 0, codes = U_k S_k, weight = V_k^T) and of the linear
    AutoEncoder (codes = encoder(table)) alike.
    """

    def __init__(self, codes: jax.Array, weight: jax.Array, bias: jax.Array | None = None):
        codes, weight = jnp.asarray(codes), jnp.asarray(weight)
        assert codes.ndim == 2 and weight.ndim == 2 and codes.shape[1] == weight.shape[0], (
            codes.shape, weight.shape)
        if bias is None:
            bias = jnp.zeros((weight.shape[1],), weight.dtype)
        self.codes = nnx.Param(codes)
        self.weight = nnx.Param(weight)
        self.bias = nnx.Param(jnp.asarray(bias))

    @property
    def vocab_size(self) -> int:
        return self.codes.shape[0]

    @property
    def features(self) -> int:
        return self.weight.shape[1]

    @property
    def rank(self) -> int:
        return self.codes.shape[1]

    def __call__(self, ids: jax.Array) -> jax.Array:
        c, w, b = jnp.take(self.codes[...], ids, axis=0), self.weight[...], self.bias[...]
        return (dot_f32(c, w) + b).astype(jnp.result_type(c, w, b))

    def attend(self, h: jax.Array) -> jax.Array:
        return self._logits(h, self.codes[...]).astype(h.dtype)

    def attend_chunk(self, h: jax.Array, start, size: int) -> jax.Array:
        return self._logits(h, slice_rows(self.codes[...], start, size))

    def _logits(self, h: jax.Array, codes: jax.Array) -> jax.Array:
        """fp32 logits `[..., n]` of the rows whose codes are `codes [n, k]`:
        h @ (C W + 1 b)^T = (h W^T) C^T + (h . b), V*k + k*d work per row instead of V*d, and
        the [V, d] table is never built. h W^T `[..., k]` goes on in h's dtype."""
        w, b = self.weight[...].astype(h.dtype), self.bias[...].astype(h.dtype)
        hw = dot_f32(h, w.T).astype(h.dtype)
        return dot_f32(hw, codes.astype(h.dtype).T) + dot_f32(h, b)[..., None]

    def table(self) -> jax.Array:
        return self.codes[...] @ self.weight[...] + self.bias[...]

    def num_params(self) -> int:
        return int(self.codes.size + self.weight.size + self.bias.size)

    def storage_bytes(self) -> int:
        return FP32_BYTES * self.num_params()


def attend_chunk(embedding, h: jax.Array, start, size: int, frame=None) -> jax.Array:
    """fp32 logits `[..., size]`: `embedding.attend_chunk(h, start, size)`, or, for a module
    without one, the same logits from its decoded rows start..start+size-1 (any module can look
    rows up). A module's own attend_chunk sums its products in fp32 (`dot_f32`), so that bf16
    operands run at the matrix units' rate; the cast here only guarantees the result's dtype.
    `frame`: `embedding.frame(h)` computed once for many chunks (the quantised heads)."""
    if frame is not None:
        return embedding.attend_chunk(h, start, size, frame=frame).astype(jnp.float32)
    if hasattr(embedding, "attend_chunk"):
        return embedding.attend_chunk(h, start, size).astype(jnp.float32)
    rows = embedding((start + jnp.arange(size))[None])[0]
    return dot_f32(h, rows.T.astype(h.dtype))


def compression_rate(embedding, vocab_size: int | None = None,
                     features: int | None = None) -> float:
    """Bytes of the fp32 `[V, d]` table over the bytes `embedding` stores."""
    v = vocab_size or embedding.vocab_size
    d = features or embedding.features
    return v * d * FP32_BYTES / embedding.storage_bytes()


def swap_embedding(model, embedding, output: str = "tied"):
    """Return a copy of `model` whose input lookup uses `embedding`.

    output="tied": a tied output head uses `embedding` too; output="original": the head keeps
    the original table. Models without a tied head (`model.tied` False) ignore `output`.
    The copy shares every array with `model` (jax arrays are immutable), so it costs no memory.
    """
    if output not in ("tied", "original"):
        raise ConfigError(f"output must be 'tied' or 'original', got {output!r}")
    old = model.embedding
    if embedding.vocab_size != old.vocab_size or embedding.features != old.features:
        raise WeightsError(
            f"embedding is {embedding.vocab_size}x{embedding.features}, "
            f"model needs {old.vocab_size}x{old.features}")
    new = nnx.merge(*nnx.split(model))
    new.embedding = embedding
    if model.tied and model.out_embedding is not None and output == "tied":
        new.out_embedding = embedding
    return new
