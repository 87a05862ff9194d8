"""Decoding for any causal model of dirjax: a KV cache, `generate` (batched, greedy or sampled;
text, token ids or a tokenizer's output in, the same form out), and `greedy`, the no-cache
reference the tests compare against.

The cache interface a causal model implements (Llama, GPT-2; Gemma 3 follows it):

    model.init_cache(batch, max_len, dtype=None) -> cache
        an empty `KVCache` of `max_len` slots per row (k and v preallocated, per layer
        [batch, kv_heads, max_len, head_dim]); its shapes are static, so one compile
        of the decode step serves a whole generation.
    model.decode(ids [B, T], cache, positions [B, T], attention_mask [B, T] | None = None,
                 last [B] | None = None)
        -> (logits [B, T, V], or [B, 1, V] at each row's position `last` when given; cache)
        runs T new tokens: their keys and values go into slots [cache.index, cache.index + T)
        of every row, the cache's index moves on by T. `positions` are the tokens' positions
        in their sequence (RoPE / learned position), per row, so a left-padded row starts at
        0 after its padding. `attention_mask` 0 marks padding: its slot is never attended.
        Each query attends to the filled slots whose position is <= its own (and, for a
        sliding-window layer, > its own - window: `cache.mask(positions, window)`). `last`
        (`at_last`): a prefill needs only each row's last real token's logits, not [B, T, V]
        (Gemma 3, a 128-token prompt, batch 8: 1 GiB and ~340 GFLOP of head saved).

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
import json
import math
import numbers
import os
from collections.abc import Mapping
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

    k, v   L arrays [B, H_kv, S, hd]  what each layer's attention wrote: heads before slots,
                                the layout attention's two products read without a transpose;
                                one array per layer, so a step writes its slot in place and
                                attention reads the layer's buffer as it is (a stacked
                                [L, ...] array made XLA copy each layer's slice out at every
                                step: 94 MB a step for SmolLM2 at batch 8 and 256 slots)
    pos    [B, S] int32          the position of the token in each slot; -1: empty or padding
    index  [] int32              the next slot to write (the same for every row)
    """
    k: tuple
    v: tuple
    pos: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
             dtype=jnp.float32) -> "KVCache":
        shape = (batch, kv_heads, max_len, head_dim)
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
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
        def put(cache, x):
            return jax.lax.dynamic_update_slice(
                cache, jnp.swapaxes(x, 1, 2).astype(cache.dtype), (0, 0, self.index, 0))
        new_k, new_v = put(self.k[layer], k), put(self.v[layer], v)
        # [B, S, H_kv, hd] as attention takes them; XLA cancels this transpose against the
        # one attention's products make, so nothing is copied
        keys, values = jnp.swapaxes(new_k, 1, 2), jnp.swapaxes(new_v, 1, 2)
        k_all = self.k[:layer] + (new_k,) + self.k[layer + 1:]
        v_all = self.v[:layer] + (new_v,) + self.v[layer + 1:]
        return dataclasses.replace(self, k=k_all, v=v_all), keys, values

    def advance(self, t: int) -> "KVCache":
        return dataclasses.replace(self, index=self.index + t)


def at_last(h: jax.Array, last: jax.Array | None) -> jax.Array:
    """Final hidden states [B, T, d] -> those at each row's position last [B] ([B, 1, d]),
    or all of them when `last` is None: what `decode` runs its head on."""
    if last is None:
        return h
    return jnp.take_along_axis(h, last.astype(jnp.int32)[:, None, None], axis=1)


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
def compiled_generate(graphdef, treedef, sampling: tuple, max_new_tokens: int, cache_dtype):
    """The whole generation of one model structure and setting as ONE jitted call:
    `run(leaves, ids [B, P], positions [B, P], attention_mask [B, P], last [B], lengths [B],
    key, eos [E], stops [S, L], stop_lengths [S]) -> (tokens [B, max_new_tokens], kept [B])`.

    The prefill of the padded prompts (logits at each row's last real token only), then a
    `lax.while_loop` of one-token decode steps on a fixed-size cache of P + max_new_tokens
    slots, as the Gemma JAX library's sampler does: EOS and stop sequences are judged on the
    device, the loop ends when every row has ended, and nothing comes back to the host until
    the end (a host loop pays a dispatch and a read-back per token). Token i is drawn with
    fold_in(key, i), as a step-by-step loop draws it. Row b keeps its first kept[b] tokens:
    up to and including its EOS or the end of a stop sequence.

    Compiled once per (batch, prompt length, max_new_tokens, the shapes of eos and stops).
    The model travels as its flat list of arrays, graphdef and treedef bound here: as a static
    argument of jit a 30-layer graphdef is hashed at every call (~40 ms on CPU), and an
    nnx.State is flattened at every call (~5 ms); here both happen once per `generate`."""
    def run(leaves, ids, positions, attention_mask, last, lengths, key, eos, stops,
            stop_lengths):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        batch, prompt = ids.shape
        cache = model.init_cache(batch, prompt + max_new_tokens, cache_dtype)
        logits, cache = model.decode(ids, cache, positions, attention_mask, last=last)
        first = sample(logits[:, 0], jax.random.fold_in(key, 0), *sampling)
        ended = jnp.zeros(batch, bool)
        out = jnp.zeros((batch, max_new_tokens), jnp.int32)
        tail = jnp.full((batch, stops.shape[1]), -1, jnp.int32)
        judge = partial(record, eos=eos, stops=stops, stop_lengths=stop_lengths)
        state = (1, first, cache, *judge(0, first, out, tail, ended, jnp.zeros(batch, jnp.int32)))

        def more(state):
            i, ended = state[0], state[5]
            return (i < max_new_tokens) & ~jnp.all(ended)

        def step(state):
            i, token, cache, out, tail, ended, kept = state
            logits, cache = model.decode(token[:, None], cache, (lengths + i - 1)[:, None])
            token = sample(logits[:, 0], jax.random.fold_in(key, i), *sampling)
            return (i + 1, token, cache, *judge(i, token, out, tail, ended, kept))

        state = jax.lax.while_loop(more, step, state)
        return state[3], state[6]

    return jax.jit(run)


def record(i, token, out, tail, ended, kept, *, eos, stops, stop_lengths):
    """Token i of every row `[B]` into out `[B, N]`; rows not yet ended keep it (kept `[B]`) and
    end on an EOS id (eos `[E]`) or when their last tokens (tail `[B, L]`, the last L) are a
    stop sequence (stops `[S, L]` right-aligned, stop_lengths `[S]`; a sequence longer than
    the tokens so far never matches)."""
    out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], i, axis=1)
    kept = kept + (~ended).astype(jnp.int32)
    done = jnp.isin(token, eos)
    width = stops.shape[1]
    if width:
        tail = jnp.concatenate([tail[:, 1:], token[:, None]], axis=1)
        unused = jnp.arange(width)[None, :] < (width - stop_lengths)[:, None]      # [S, L]
        same = (tail[:, None, :] == stops[None]) | unused[None]                     # [B, S, L]
        whole = jnp.all(same, axis=-1) & (stop_lengths <= i + 1)[None]
        done = done | jnp.any(whole, axis=-1)
    return out, tail, ended | done, kept


# ----------------------------------------------------------------------------- generate

ACCEPTED = ("a string or list of strings (with tokenizer=), token ids (a list of ints, a list of "
            "int lists, a 1-D or 2-D integer array) or a tokenizer's output (input_ids, "
            "attention_mask)")
AUTO = "auto"  # eos_id's default: the ids `eos_ids_of` finds


def generate(model, inputs, max_new_tokens: int = 32, *, tokenizer=None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int = 0, eos_id=AUTO, stop=None, return_prompt: bool = False,
             padding_side: str = "left", cache_dtype=None):
    """Continue `inputs` by up to `max_new_tokens` tokens with a KV cache; the output has the
    form of the input:

        "text"                    (tokenizer= needed) -> "continuation"
        ["text", ...]             (tokenizer= needed) -> ["continuation", ...]
        [id, ...] or a 1-D integer array: one prompt  -> [new id, ...]
        [[id, ...], ...] (ragged) or a 2-D integer array -> [[new id, ...], ...]
        a tokenizer's output ({"input_ids", "attention_mask"}: lists or arrays, padded on either
        side; the padding, mask 0, is dropped)    -> new ids, flat or nested as its input_ids

    Only what is new comes back, as `model.generate(...)[:, prompt_len:]` or the text-generation
    pipeline's `return_full_text=False` give it; `return_prompt=True` puts the prompt in front
    (text: the input string itself, as the pipeline's default does; ids: the prompt's ids, without
    padding). Text is decoded with skip_special_tokens=True, prompt and continuation together and
    cut after the prompt, as the pipeline does (a word's leading space decodes as in the whole).

    Greedy when temperature is 0; otherwise sampled (top_k: None or 0 = no limit; 0 < top_p <= 1)
    with a key derived from `seed` and the step, so the same seed gives the same tokens. A row
    ends at its first EOS or after a `stop` sequence (id lists, or strings with a tokenizer,
    matched as the ids `tokenizer.encode(s, add_special_tokens=False)` gives), both kept in its
    output; generation stops when every row has ended. `eos_id`: "auto" (default) the
    tokenizer's eos_token_id and the model's generation config (`eos_ids_of`), as transformers'
    generate; an id or a list of ids: those alone; None: no EOS. `padding_side` ("left",
    "right") only changes where the prompts sit in the cache, not the tokens.

    Every argument is judged before anything compiles: a bad one ends in one ConfigError line.
    The whole generation is one compiled call (`compiled_generate`): the prefill of the padded
    prompts [B, P], then a loop of decode steps on [B, 1] on the device, compiled once for this
    (batch, P, max_new_tokens).
    """
    vocab = causal_vocab(model)
    prompts, form, texts = prompts_of(inputs, tokenizer, vocab)
    judge_options(max_new_tokens, temperature, top_k, top_p, seed, padding_side, return_prompt,
                  cache_dtype)
    eos = judge_eos(eos_id, model, tokenizer, vocab)
    stops = judge_stops(stop, tokenizer)
    if max_new_tokens == 0:
        new = [[] for _ in prompts]
    else:
        check_room(model, prompts, max_new_tokens, cache_dtype, vocab)
        sampling = (float(temperature), int(top_k) if top_k else None,
                    None if top_p is None else float(top_p))
        new = decode_new(model, prompts, int(max_new_tokens), sampling, int(seed), eos, stops,
                         padding_side, cache_dtype)
    return shaped(new, prompts, form, texts, tokenizer, return_prompt)


def decode_new(model, prompts: list[list[int]], max_new_tokens: int, sampling: tuple, seed: int,
               eos: set[int], stops: list[list[int]], padding_side: str,
               cache_dtype) -> list[list[int]]:
    """The new ids of each prompt (judged: non-empty, ids in the vocabulary): the padded
    prompts and the EOS ids and stop sequences as arrays, then one call of
    `compiled_generate`."""
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
    eos_ids = np.array(sorted(eos) or [-1], np.int32)       # -1: no id matches
    width = max((len(s) for s in stops), default=0)
    stop_ids = np.zeros((len(stops), width), np.int32)       # right-aligned
    for row, s in enumerate(stops):   # an id no token can be (< 0, >= 2^31) never matches
        stop_ids[row, width - len(s):] = [x if 0 <= x < 2**31 else -1 for x in s]
    stop_lengths = np.array([len(s) for s in stops], np.int32)

    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    dtype = None if cache_dtype is None else jnp.dtype(cache_dtype)
    run = compiled_generate(graphdef, treedef, sampling, max_new_tokens, dtype)
    tokens, kept = run(leaves, ids, positions, mask, last, lengths, jax.random.key(seed),
                       eos_ids, stop_ids, stop_lengths)
    tokens, kept = np.asarray(tokens), np.asarray(kept)
    return [tokens[row, :kept[row]].tolist() for row in range(B)]


def eos_ids_of(model, tokenizer=None) -> list[int]:
    """The ids that end a row by default, sorted: the tokenizer's `eos_token_id` and the model's
    generation config's (one id or a list: Llama 3 and Gemma 3 list several), unioned, as
    transformers' generate takes them. `model.generation_config`, set by the loader from the
    source's generation_config.json or GGUF metadata, may be a dict, its JSON text or a
    transformers GenerationConfig; a model without one has the tokenizer's alone."""
    config = getattr(model, "generation_config", None)
    if isinstance(config, str):
        config = json.loads(config)
    found = [getattr(tokenizer, "eos_token_id", None),
             config.get("eos_token_id") if isinstance(config, Mapping)
             else getattr(config, "eos_token_id", None)]
    ids = set()
    for f in found:
        ids.update(int(x) for x in (f if isinstance(f, (list, tuple)) else [f]) if is_int(x))
    return sorted(ids)


# ----------------------------------------------------------------------------- judging arguments

def causal_vocab(model) -> int:
    """V, the ids a prompt may hold, of a model `generate` can run (one with a KV-cache decode)."""
    if not (hasattr(model, "decode") and hasattr(model, "init_cache")):
        raise ConfigError(f"{type(model).__name__} has no KV-cache decode: not a causal LM")
    vocab = getattr(getattr(model, "embedding", None), "vocab_size", None)
    return int(vocab or model.config.vocab_size)


def prompts_of(inputs, tokenizer, vocab: int) -> tuple[list[list[int]], str, list[str] | None]:
    """(the prompts as id lists, each non-empty and in [0, vocab); the form of the output: "text",
    "texts", "flat" or "nested"; the input strings, or None) of anything `generate` takes."""
    texts = None
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs
                                   and all(isinstance(x, str) for x in inputs)):
        if tokenizer is None:
            raise ConfigError(f"inputs are text ({describe(inputs)}): pass tokenizer= to encode "
                              "them, or give token ids")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        prompts = [list(ids) for ids in tokenizer(texts)["input_ids"]]
        form = "text" if isinstance(inputs, str) else "texts"
    elif isinstance(inputs, Mapping):
        prompts, form = unpadded(inputs)
    else:
        prompts, form = id_rows(inputs, "inputs")
    for i, row in enumerate(prompts):
        if not row:
            raise ConfigError(f"prompt {i} is empty: each prompt needs at least one token")
        lo, hi = min(row), max(row)
        if lo < 0 or hi >= vocab:
            raise ConfigError(f"prompt {i} holds token id {lo if lo < 0 else hi}, outside the "
                              f"model's vocabulary [0, {vocab})")
    return prompts, form, texts


def id_rows(ids, name: str) -> tuple[list[list[int]], str]:
    """Token ids, one prompt (flat) or several (nested, ragged allowed) -> (rows of Python ints,
    "flat" | "nested"). Only integers: a float or bool id is a mistake, even 5.0."""
    if is_array(ids):
        a = np.asarray(ids)
        if a.ndim in (1, 2) and a.size and not int_dtype(a.dtype):
            raise ConfigError(f"{name} is a {a.dtype} array: token ids must be integers")
        if a.ndim in (1, 2) and a.size:
            return (a.tolist(), "nested") if a.ndim == 2 else ([a.tolist()], "flat")
    elif isinstance(ids, (list, tuple)) and ids:
        if all(is_scalar(x) for x in ids):
            return [int_row(ids, 0)], "flat"
        if all(isinstance(x, (list, tuple)) or (is_array(x) and np.ndim(x) == 1) for x in ids):
            return [int_row(row, i) for i, row in enumerate(ids)], "nested"
    raise ConfigError(f"{name}: got {describe(ids)}; give {ACCEPTED}")


def int_row(row, i: int) -> list[int]:
    """Prompt i's ids (a list, tuple or 1-D array) as Python ints, if all are integers."""
    if is_array(row):
        a = np.asarray(row)
        if not int_dtype(a.dtype):
            raise ConfigError(f"prompt {i} is a {a.dtype} array: token ids must be integers")
        return a.tolist()
    for x in row:
        if not is_int(x):
            raise ConfigError(f"prompt {i} holds {x!r} ({type(x).__name__}): token ids are ints")
    return [int(x) for x in row]


def unpadded(encoding: Mapping) -> tuple[list[list[int]], str]:
    """The prompts of a tokenizer's output: `input_ids` where `attention_mask` is 1, so padding
    on either side (or none: no mask) is dropped."""
    if "input_ids" not in encoding:
        raise ConfigError(f"inputs: got {describe(encoding)} without 'input_ids'; give {ACCEPTED}")
    rows, form = id_rows(encoding["input_ids"], "input_ids")
    mask = encoding.get("attention_mask")
    if mask is None:
        return rows, form
    masks = [mask] if form == "flat" else list(mask) if is_array(mask) or isinstance(
        mask, (list, tuple)) else None
    if masks is None or len(masks) != len(rows):
        raise ConfigError(f"attention_mask ({describe(mask)}) does not match input_ids "
                          f"({len(rows)} row(s))")
    out = []
    for i, (row, m) in enumerate(zip(rows, masks)):
        m = np.asarray(m)
        if m.shape != (len(row),) or not np.isin(m, (0, 1)).all():
            raise ConfigError(f"attention_mask row {i} must be {len(row)} zeros and ones, as its "
                              f"input_ids; got {describe(m)}")
        out.append([x for x, keep in zip(row, m.tolist()) if keep])
    return out, form


def judge_options(max_new_tokens, temperature, top_k, top_p, seed, padding_side, return_prompt,
                  cache_dtype) -> None:
    """One ConfigError line for the first bad option (NaN fails every comparison below)."""
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not is_real(temperature) or not temperature >= 0 or not math.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number >= 0 (0: greedy), got "
                          f"{temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise ConfigError(f"top_k must be None or 0 (no limit) or an int >= 1, got {top_k!r}")
    if top_p is not None and (not is_real(top_p) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p must be None or a number with 0 < top_p <= 1, got {top_p!r}")
    if not is_int(seed) or not -2**63 <= seed < 2**63:  # what jax.random.key takes
        raise ConfigError(f"seed must be a 64-bit int, got {seed!r}")
    if not (isinstance(padding_side, str) and padding_side in ("left", "right")):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not isinstance(return_prompt, (bool, np.bool_)):
        raise ConfigError(f"return_prompt must be True or False, got {return_prompt!r}")
    if cache_dtype is not None:
        try:
            floating = jnp.issubdtype(jnp.dtype(cache_dtype), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ConfigError(f"cache_dtype must be a floating dtype, got {cache_dtype!r}")


def judge_eos(eos_id, model, tokenizer, vocab: int) -> set[int]:
    """The ids that end a row: "auto" -> `eos_ids_of`; None -> none; an id or ids -> those."""
    if isinstance(eos_id, str) and eos_id == AUTO:
        return set(eos_ids_of(model, tokenizer))
    if eos_id is None:
        return set()
    many = isinstance(eos_id, (list, tuple, set)) or (is_array(eos_id) and np.ndim(eos_id) == 1)
    ids = list(eos_id) if many else [eos_id]
    if not all(is_int(x) and 0 <= x < vocab for x in ids):
        raise ConfigError(f"eos_id must be 'auto', None, or token ids in [0, {vocab}); got "
                          f"{eos_id!r}")
    return {int(x) for x in ids}


def judge_stops(stop, tokenizer) -> list[list[int]]:
    """Stop sequences as id lists. `stop`: None, a string, or a list of strings (encoded by the
    tokenizer, without special tokens) and id lists; empty ones are dropped."""
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        return []
    if not isinstance(stop, (list, tuple)):
        raise ConfigError(f"stop must be a list of id lists or strings, got {describe(stop)}")
    out = []
    for s in stop:
        if isinstance(s, str):
            if tokenizer is None:
                raise ConfigError(f"stop string {s!r} needs tokenizer= to encode it")
            ids = list(tokenizer.encode(s, add_special_tokens=False))
        elif isinstance(s, (list, tuple)) and all(is_int(x) for x in s):
            ids = [int(x) for x in s]
        elif is_array(s) and np.ndim(s) == 1 and int_dtype(np.asarray(s).dtype):
            ids = np.asarray(s).tolist()
        else:
            raise ConfigError(f"stop must be a list of id lists or strings, e.g. [[13, 198]] "
                              f"or ['\\n'], got an item: {describe(s)}")
        if ids:
            out.append(ids)
    return out


def check_room(model, prompts: list[list[int]], max_new_tokens: int, cache_dtype,
               vocab: int) -> None:
    """Refuse, before compiling, a generation past the model's positions or one whose cache and
    prefill logits alone exceed the device's memory."""
    B, P = len(prompts), max(map(len, prompts))
    length = P + max_new_tokens
    config = getattr(model, "config", None)
    limit = getattr(config, "max_positions", None) or getattr(
        config, "max_position_embeddings", None)
    if limit and length > limit:
        raise ConfigError(f"the longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) "
                          f"is {length} positions, more than the model's {limit} positions")
    # The cache is allocated whole before the first token (k, v: L x [B, H_kv, P + new, hd])
    # and the prefill writes logits [B, V] in fp32 (the last real token's only): past the
    # device's memory either ends in a RESOURCE_EXHAUSTED traceback after the compile (or, on
    # CPU, the OS killing the process).
    # Their sizes are known now, from the model's own init_cache traced abstractly (nothing is
    # allocated). Weights and activations come on top, so this bound only refuses what could
    # never run.
    cache = jax.eval_shape(lambda: model.init_cache(B, length, cache_dtype))
    need = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(cache))
    need += B * vocab * 4
    have, where = device_memory()
    if need > have:
        raise ConfigError(f"{B} prompt(s) of up to {P} tokens + max_new_tokens {max_new_tokens} "
                          f"need a {need / 2**30:.1f} GiB KV cache and logits, more than the "
                          f"{have / 2**30:.1f} GiB of {where}: lower max_new_tokens or the batch")


def device_memory() -> tuple[int, str]:
    """(bytes, a name) of the memory the cache goes to: the default device's, or the host's
    where the backend does not say (CPU)."""
    device = jax.devices()[0]
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except (NotImplementedError, RuntimeError):  # a backend without memory_stats
        limit = None
    if limit:
        return int(limit), f"the {device.device_kind}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"


def shaped(new: list[list[int]], prompts: list[list[int]], form: str, texts, tokenizer,
           return_prompt: bool):
    """The new ids in the form of the input (see `generate`), the prompt first if asked."""
    if form in ("text", "texts"):
        out = [(text if return_prompt else "") + continuation(tokenizer, prompt, ids)
               for text, prompt, ids in zip(texts, prompts, new)]
    else:
        out = [prompt + ids for prompt, ids in zip(prompts, new)] if return_prompt else new
    return out[0] if form in ("text", "flat") else out


def continuation(tokenizer, prompt: list[int], new: list[int]) -> str:
    """The text `new` adds after `prompt`: both decoded together and cut after the decoded
    prompt, as transformers' text-generation pipeline does (a SentencePiece word's leading
    space, or a character split across the two, decodes as in the whole)."""
    whole = tokenizer.decode(prompt + new, skip_special_tokens=True)
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head):]
    return tokenizer.decode(new, skip_special_tokens=True)


def describe(x) -> str:
    """A few words on what a user passed, for an error line."""
    if x is None or isinstance(x, (bool, np.bool_)):
        return repr(x)
    if isinstance(x, str):
        return f"the string {x[:40]!r}"
    if is_array(x):
        a = np.asarray(x)
        return f"a {a.ndim}-D {a.dtype} array of shape {a.shape}"
    if isinstance(x, Mapping):
        return f"a {type(x).__name__} with keys {sorted(map(str, x))[:6]}"
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + ('...' if len(text) > 60 else '')}"


def is_array(x) -> bool:
    """A numpy or jax array, or anything numpy reads as one (a torch tensor on CPU)."""
    return isinstance(x, (np.ndarray, jax.Array)) or (
        hasattr(x, "__array__") and not isinstance(x, (str, bytes, Mapping)))


def int_dtype(dtype) -> bool:
    return np.issubdtype(dtype, np.integer)  # bool is not an integer dtype


def is_int(x) -> bool:
    """A Python, numpy or 0-d array integer; bools are not ids."""
    if isinstance(x, (bool, np.bool_)):
        return False
    return isinstance(x, (int, np.integer)) or (
        is_array(x) and np.ndim(x) == 0 and int_dtype(np.asarray(x).dtype))


def is_real(x) -> bool:
    return is_int(x) or isinstance(x, (float, np.floating)) or (
        is_array(x) and np.ndim(x) == 0 and np.issubdtype(np.asarray(x).dtype, np.floating))


def is_scalar(x) -> bool:
    """One id's worth of value (right or wrong: 5, 5.7, True): a flat prompt's element."""
    return isinstance(x, (numbers.Number, np.generic)) or (is_array(x) and np.ndim(x) == 0)


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
