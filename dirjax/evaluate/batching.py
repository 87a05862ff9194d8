"""Batching shared by every evaluation and by fine-tuning: padding rows to a common length,
grouping examples of similar length, and running a jitted per-batch function over a model.

Every batch is right-padded (our models assume it). Lengths are rounded up (to a bucket or a
multiple) so that few distinct shapes reach `jax.jit`: one compile per shape.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

# padded lengths of variable-length batches: one compile per bucket
BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


def bucket_batches(lengths: list[int], batch_size: int):
    """Batches of indices, sorted by length, each with its padded length from BUCKETS."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(lengths[i] for i in idx)
        yield idx, next((b for b in BUCKETS if b >= longest), longest)


def pad_rows(rows, length: int, value: int, size: int | None = None) -> np.ndarray:
    """`[size or len(rows), length]` int32: each row right-padded with `value` (missing rows
    too)."""
    out = np.full((size or len(rows), length), value, np.int32)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def pad_batch(rows: list[list[int]], types: list[list[int]], size: int, multiple: int,
              **per_example) -> dict[str, np.ndarray]:
    """Right-pad token rows to T = a multiple of `multiple` and the batch to `size` rows;
    padded rows get weight 0. Extra per-example arrays (labels, start, end) are padded too."""
    n = len(rows)
    t = max(multiple, math.ceil(max(map(len, rows)) / multiple) * multiple)
    out = {"ids": pad_rows(rows, t, 0, size),
           "mask": pad_rows([[1] * len(r) for r in rows], t, 0, size),
           "token_type_ids": pad_rows(types, t, 0, size),
           "weight": (np.arange(size) < n).astype(np.float32)}
    for k, v in per_example.items():
        v = np.asarray(v)
        out[k] = np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
    return out


def length_grouped_order(lengths: np.ndarray, batch: int, rng: np.random.Generator,
                         group: int = 50) -> list[np.ndarray]:
    """Shuffled batches of indices in which lengths are similar: shuffle, sort chunks of
    `group` batches by length, cut into batches, shuffle the batches."""
    perm = rng.permutation(len(lengths))
    batches = []
    for c in range(0, len(perm), batch * group):
        chunk = perm[c:c + batch * group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_order(lengths: np.ndarray, batch: int) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def compute_state(state, compute_dtype="float32"):
    """`state` with its wider floating arrays (fp32) cast to `compute_dtype` (bfloat16): the
    parameters every matmul of an evaluation reads. "float32" (the default) keeps the state as
    loaded, in whatever dtype it was loaded. Integer arrays (codes) and half-width floats
    (fp16 codebooks, scales) are kept: a head converts them as it decodes.

    Made once per evaluation, outside jit: a copy at half the fp32 bytes, where casting inside
    the jitted step would read every fp32 weight and write its bf16 copy again on every batch
    (XLA:CPU's matmul kernels do not fuse the convert)."""
    dtype = jnp.dtype(compute_dtype)
    if dtype == jnp.float32:
        return state

    def cast(x):
        wide = jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize > dtype.itemsize
        return x.astype(dtype) if wide else x
    return jax.tree.map(cast, state)


def jit_on_model(fn, model, compute_dtype="float32"):
    """(jitted fn(state, *arrays), state) for `fn(graphdef, state, *arrays)` on `model`, its
    state cast to `compute_dtype` (`compute_state`).

    The graph definition is closed over rather than a static argument: a module may hold
    unhashable static data (e.g. a dict of metrics), and one evaluation is one compile anyway.
    """
    graphdef, state = nnx.split(model)
    return (jax.jit(lambda st, *arrays: fn(graphdef, st, *arrays)),
            compute_state(state, compute_dtype))


def run_batches(fn, model, arrays, batch_size: int, desc: str, progress: bool,
                compute_dtype="float32") -> np.ndarray:
    """fn(graphdef, state, *batch) -> [B] over rows of `arrays`, padding the last batch; the
    model's state cast to `compute_dtype` once."""
    step, state = jit_on_model(fn, model, compute_dtype)
    n = len(arrays[0])
    out = []
    for start in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=not progress):
        batch = [a[start:start + batch_size] for a in arrays]
        short = batch_size - len(batch[0])
        if short:
            # dummy rows: mask 1 so no row is fully masked (softmax of all -inf is nan)
            batch = [np.concatenate([b, np.ones((short, *b.shape[1:]), b.dtype)]) for b in batch]
        out.append(np.asarray(step(state, *batch))[:batch_size - short])
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
