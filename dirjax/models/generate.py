"""Decoding for any causal model of dirjax: a KV cache, `generate` (batched, greedy or sampled),
and `greedy`, the no-cache reference the tests compare against.

The cache interface a causal model implements (Llama, GPT-2; Gemma 3 follows it):

    model.init_cache(batch, max_len, dtype=None) -> cache
        an empty `KVCache` of `max_len` slots per row (k and v preallocated
        [layers, batch, kv_heads, max_len, head_dim]); its shapes are static, so one compile
        of the decode step serves a whole generation.
    model.decode(ids [B, T], cache, positions [B, T], attention_mask [B, T] | None = None)
        -> (logits [B, T, V], cache)
        runs T new tokens: their keys and values go into slots [cache.index, cache.index + T)
        of every row, the cache's index moves on by T. `positions` are the tokens' positions
        in their sequence (RoPE / learned position), per row, so a left-padded row starts at
        0 after its padding. `attention_mask` 0 marks padding: its slot is never attended.
        Each query attends to the filled slots whose position is <= its own (and, for a
        sliding-window layer, > its own - window: `cache.mask(positions, window)`).

A model implements `decode` with the four calls of `KVCache` (see `dirjax.models.llama.Llama`):
`cache.fill(positions, attention_mask)` records the new slots' positions, `cache.mask(positions)`
gives the [B, 1, T, S] attention mask, layer i's attention calls `cache.update(i, k, v)` to
write its new keys/values and get back all S of them, and `cache.advance(T)` ends the call.
`generate` never looks inside the cache: a model may keep another pytree there.

The input lookup goes through `model.embedding` and the logits through
`model.out_embedding.attend`, so a compressed embedding swapped in by `dirjax.swap_embedding`
decodes as the dense one does.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax.errors import ConfigError


# ----------------------------------------------------------------------------- the cache

@partial(jax.tree_util.register_dataclass, data_fields=["k", "v", "pos", "index"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer over S preallocated slots per row.

    k, v   [L, B, H_kv, S, hd]  what each layer's attention wrote: heads before slots, the
                                layout attention's two products read without a transpose
    pos    [B, S] int32          the position of the token in each slot; -1: empty or padding
    index  [] int32              the next slot to write (the same for every row)
    """
    k: jax.Array
    v: jax.Array
    pos: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
             dtype=jnp.float32) -> "KVCache":
        shape = (layers, batch, kv_heads, max_len, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.full((batch, max_len), -1, jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.pos.shape[1]

    def fill(self, positions: jax.Array, attention_mask: jax.Array | None = None) -> "KVCache":
        """Record the positions [B, T] of the T tokens about to be written at `index`
        (-1 where attention_mask is 0: padding is never attended)."""
        positions = positions.astype(jnp.int32)
        if attention_mask is not None:
            positions = jnp.where(attention_mask > 0, positions, -1)
        pos = jax.lax.dynamic_update_slice(self.pos, positions, (0, self.index))
        return dataclasses.replace(self, pos=pos)

    def mask(self, positions: jax.Array, window: int | None = None) -> jax.Array:
        """[B, 1, T, S] bool: query t (at positions[b, t]) may attend slot s. Causal by
        position, not by slot, so left and right padding both work."""
        q, s = positions[:, None, :, None], self.pos[:, None, None, :]
        allowed = (s >= 0) & (s <= q)
        if window is not None:  # a sliding-window layer sees the last `window` positions
            allowed = allowed & (q - s < window)
        return allowed

    def update(self, layer: int, k: jax.Array, v: jax.Array):
        """Write layer `layer`'s new k, v [B, T, H_kv, hd] at `index`;
        -> (cache, all keys [B, S, H_kv, hd], all values [B, S, H_kv, hd])."""
        at = (layer, 0, 0, self.index, 0)
        put = lambda cache, x: jax.lax.dynamic_update_slice(  # noqa: E731
            cache, jnp.swapaxes(x, 1, 2)[None].astype(cache.dtype), at)
        new_k, new_v = put(self.k, k), put(self.v, v)
        # [B, S, H_kv, hd] as attention takes them; XLA cancels this transpose against the
        # one attention's products make, so nothing is copied
        keys, values = (jnp.swapaxes(x[layer], 1, 2) for x in (new_k, new_v))
        return dataclasses.replace(self, k=new_k, v=new_v), keys, values

    def advance(self, t: int) -> "KVCache":
        return dataclasses.replace(self, index=self.index + t)


# ----------------------------------------------------------------------------- sampling

def sample(logits: jax.Array, key: jax.Array, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None) -> jax.Array:
    """Next tokens [B] from logits [B, V]: argmax when temperature is 0, else a draw from
    softmax(logits / temperature) restricted to the top_k tokens and to the smallest set whose
    probability reaches top_p (nucleus). The arguments but logits and key are static."""
    logits = logits.astype(jnp.float32)
    if temperature == 0 or top_k == 1:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None or (top_p is not None and top_p < 1.0):
        # candidates in decreasing order: top_k of them, or the whole vocabulary for top_p
        k = min(top_k or logits.shape[-1], logits.shape[-1])
        values, ids = jax.lax.top_k(logits, k)
        if top_p is not None and top_p < 1.0:
            probs = jax.nn.softmax(values, axis=-1)
            # keep a token while the mass before it is below top_p: the first always stays
            before = jnp.cumsum(probs, axis=-1) - probs
            values = jnp.where(before < top_p, values, -jnp.inf)
        choice = jax.random.categorical(key, values, axis=-1)
        return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@lru_cache(maxsize=16)
def compiled_step(graphdef, treedef, sampling: tuple):
    """The jitted generation step of one model structure and sampling setting:
    `step(leaves, cache, ids [B, T], positions [B, T], attention_mask, last [B], key, i)
    -> (next tokens [B, 1], cache)`: one `decode` call, then a token per row from the logits
    at `last` (the row's last real token), drawn with fold_in(key, i). Compiled once per
    shape: once for the prefill of a prompt length, once for every decode step of a
    (batch, max_len).

    The model travels as its flat list of arrays, graphdef and treedef bound here: as a static
    argument of jit a 30-layer graphdef is hashed at every call (~40 ms on CPU, more than a
    decode step), and an nnx.State is flattened at every call (~5 ms); here both happen once
    per `generate`."""
    def step(leaves, cache, ids, positions, attention_mask, last, key, i):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        logits, cache = model.decode(ids, cache, positions, attention_mask)
        logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
        return sample(logits, jax.random.fold_in(key, i), *sampling)[:, None], cache

    return jax.jit(step, donate_argnames=("cache",))


# ----------------------------------------------------------------------------- generate

def generate(model, prompts: list[list[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int = 0, eos_id: int | list[int] | None = None,
             stop: list[list[int]] | None = None, padding_side: str = "left",
             cache_dtype=None) -> list[list[int]]:
    """New token ids for each prompt (a list of token-id lists of any lengths), with a KV cache.

    Prefill runs the padded prompts [B, P] in one call; each new token is one call of the
    decode step on [B, 1], compiled once for this (batch, P + max_new_tokens). Greedy when
    temperature is 0; otherwise sampled (top_k, top_p) with a key derived from `seed` and the
    step, so the same seed gives the same tokens. A row ends at its first `eos_id` (one id or
    several) or after a `stop` sequence (lists of ids), both kept in its output; generation
    stops when every row has ended. `padding_side` ("left", "right") only changes where the
    prompts sit in the cache, not the tokens.
    """
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("generate needs at least one prompt, each of at least one token")
    if not hasattr(model, "decode"):
        raise ConfigError(f"{type(model).__name__} has no KV-cache decode: not a causal LM")
    if temperature < 0 or (top_k is not None and top_k < 1) or not 0 < (top_p or 1) <= 1:
        raise ConfigError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got "
                          f"{temperature}, {top_k}, {top_p}")
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    eos = set(np.atleast_1d([] if eos_id is None else eos_id).tolist())
    stops = [list(s) for s in stop or [] if len(s)]
    sampling = (float(temperature), top_k, top_p)

    B, P = len(prompts), max(len(p) for p in prompts)
    lengths = np.array([len(p) for p in prompts], np.int32)
    ids = np.zeros((B, P), np.int32)
    mask = np.zeros((B, P), np.int32)
    for row, p in enumerate(prompts):
        at = P - len(p) if padding_side == "left" else 0
        ids[row, at:at + len(p)], mask[row, at:at + len(p)] = p, 1
    # positions count real tokens only; padding takes a nearby real position (never attended)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    last = np.full(B, P - 1, np.int32) if padding_side == "left" else lengths - 1

    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    step_fn = compiled_step(graphdef, treedef, sampling)
    cache = model.init_cache(B, P + max_new_tokens, cache_dtype)
    key = jax.random.key(seed)
    token, cache = step_fn(leaves, cache, ids, positions, mask, last, key, 0)
    zeros = np.zeros(B, np.int32)
    out = [[] for _ in prompts]
    ended = np.zeros(B, bool)
    for step in range(1, max_new_tokens + 1):
        # queue the next step before reading this token back: the host's checks overlap it
        if step < max_new_tokens:
            nxt, cache = step_fn(leaves, cache, token, (lengths + step - 1)[:, None], None,
                                 zeros, key, step)
        for row, tok in enumerate(np.asarray(token)[:, 0].tolist()):
            if not ended[row]:
                out[row].append(tok)
                ended[row] = tok in eos or any(out[row][-len(s):] == s for s in stops)
        if ended.all() or step == max_new_tokens:
            break
        token = nxt
    return out


def greedy(model, ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy continuation (new token ids) of one prompt `ids`, without a cache: the reference
    `generate` is tested against.

    Every step reruns the jitted forward on one fixed [1, L] buffer (so it compiles once);
    causal attention makes position n-1 see only the n tokens written so far. Fine for the few
    tokens of a test or a demo.
    """
    L = len(ids) + max_new_tokens
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, buf, n):
        logits = nnx.merge(graphdef, state)(buf)
        return jnp.argmax(logits[0, n - 1])

    buf = np.zeros((1, L), np.int32)
    buf[0, :len(ids)] = ids
    out = []
    for n in range(len(ids), L):
        tok = int(next_token(state, jnp.asarray(buf), n))
        out.append(tok)
        if tok == eos_id:
            break
        buf[0, n] = tok
    return out
