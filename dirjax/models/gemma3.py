"""Gemma 3 text decoder (Gemma3ForCausalLM: 270M, 1B, and the text half of 4B-27B) in Flax NNX.

Read top to bottom: the config, the blocks (RMSNorm with (1 + w), RoPE with two bases,
grouped-query attention with per-head q/k norms and sliding-window or global causal masks,
GeGLU MLP), the model, then loading from a Hugging Face directory (safetensors) or a GGUF file.
Both loaders go through `from_state`, the one explicit mapping from Hugging Face tensor names
to our modules, with a shape assert on every tensor.

What sets Gemma 3 apart from Llama, each mirrored from transformers' `modeling_gemma3.py`:
  - every RMSNorm multiplies by (1 + w), in fp32, and casts after the product;
  - four norms per layer: before and after attention, before and after the MLP;
  - q and k are RMS-normed per head before RoPE; scores are scaled by query_pre_attn_scalar^-0.5;
  - layers are "sliding_attention" (a query sees the `sliding_window` keys up to itself,
    RoPE base `rope_local_base_freq`) or "full_attention" (all earlier keys, base `rope_theta`,
    with the linear RoPE scaling of the 4B-27B models);
  - the input embedding is multiplied by sqrt(hidden_size), here in the model rather than in the
    embedding module, so a swapped-in compressed embedding is scaled the same way;
  - optional tanh soft-capping of the final logits.
Batches are right-padded and positions are arange(T), as everywhere in dirjax; `decode` runs
tokens at any positions against a KV cache (`init_cache`; the interface is in
dirjax/models/generate.py), sliding layers masking the cache slots outside their window.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax.embedding import Embedding
from dirjax.errors import WeightsError
from dirjax.models.generate import KVCache, at_last
from dirjax.models.gguf import gguf_tokenizer, read_gguf
from dirjax.models.llama import attention  # grouped-query, scores laid out for the softmax
from dirjax.models.weights import load_tokenizer, read_config, read_safetensors, take

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int            # < num_heads: grouped-query attention
    head_dim: int
    intermediate_size: int
    layer_types: tuple[str, ...]  # SLIDING or FULL, one per layer
    sliding_window: int = 4096   # a sliding layer's query sees keys t - window < s <= t
    query_pre_attn_scalar: float = 256.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0      # full (global) layers
    rope_local_theta: float = 10_000.0   # sliding (local) layers
    rope_factor: float = 1.0             # linear RoPE scaling of the full layers (4B-27B: 8)
    final_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf(cls, c: dict) -> "Gemma3Config":
        """From a Hugging Face `config.json` dict: Gemma3ForCausalLM's, or the `text_config` of a
        multimodal Gemma3ForConditionalGeneration; transformers v4 or v5 spelling of RoPE."""
        if "text_config" in c:
            c = dict(c["text_config"] or {})
        if c.get("attention_bias"):
            raise WeightsError("Gemma 3 checkpoints with attention_bias=true are not supported")
        if c.get("use_bidirectional_attention"):
            raise WeightsError(
                "Gemma 3 with use_bidirectional_attention=true (an encoder) is not supported")
        act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise WeightsError(
                f"Gemma 3 hidden_activation {act!r} is not supported (gelu tanh only)")
        heads, layers = c.get("num_attention_heads", 8), c.get("num_hidden_layers", 26)
        layer_types = c.get("layer_types")
        if layer_types is None:  # older configs: every `pattern`-th layer is global
            pattern = c.get("sliding_window_pattern", 6)
            layer_types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
        if len(layer_types) != layers or set(layer_types) - {SLIDING, FULL}:
            raise WeightsError(
                f"Gemma 3 layer_types must be {layers} of {SLIDING!r}/{FULL!r}: {layer_types}")
        full, local = rope_parameters(c)
        head_dim = c.get("head_dim") or c.get("hidden_size", 2304) // heads
        return cls(
            vocab_size=c.get("vocab_size", 262_208), hidden_size=c.get("hidden_size", 2304),
            num_layers=layers, num_heads=heads, num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=head_dim, intermediate_size=c.get("intermediate_size", 9216),
            layer_types=tuple(layer_types), sliding_window=c.get("sliding_window") or 4096,
            query_pre_attn_scalar=float(c.get("query_pre_attn_scalar", 256)),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=full.get("rope_theta", 1_000_000.0),
            rope_local_theta=local.get("rope_theta", 10_000.0),
            rope_factor=full.get("factor", 1.0) if full["rope_type"] == "linear" else 1.0,
            final_logit_softcapping=c.get("final_logit_softcapping"),
            # attn_logit_softcapping is ignored, as transformers' Gemma3Attention ignores it
            tie_word_embeddings=c.get("tie_word_embeddings", True),
        )


def rope_parameters(c: dict) -> tuple[dict, dict]:
    """(full, sliding) RoPE dicts with `rope_theta` (+ `rope_type`, `factor`) from a config dict.

    v5 keeps one dict per layer type in `rope_parameters`; v4 has `rope_theta`,
    `rope_local_base_freq` and `rope_scaling` (which applies to the full layers only)."""
    params = c.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:
        full, local = dict(params.get(FULL) or {}), dict(params.get(SLIDING) or {})
    else:  # v4, or a single flat dict
        full = dict(params or c.get("rope_scaling") or {})
        full.setdefault("rope_theta", c.get("rope_theta", 1_000_000.0))
        local = {"rope_theta": c.get("rope_local_base_freq", 10_000.0)}
    for name, p in ((FULL, full), (SLIDING, local)):
        rope_type = p.get("rope_type", p.get("type", "default"))
        allowed = ("default", "linear") if name == FULL else ("default",)
        if rope_type not in allowed:
            raise WeightsError(
                f"Gemma 3 RoPE {rope_type!r} on {name} layers is not supported {allowed}")
        p["rope_type"] = rope_type
    return full, local


# ----------------------------------------------------------------------------- blocks

class Linear(nnx.Module):
    """y = x @ kernel, kernel [in, out] (Hugging Face stores [out, in]; transposed at load)."""

    def __init__(self, kernel: jax.Array):
        self.kernel = nnx.Param(kernel)

    def __call__(self, x: jax.Array) -> jax.Array:
        # summed in fp32 whatever the operands (bf16 ones run at the matrix units' rate; a
        # bf16 -> bf16 product falls to XLA:CPU's slow path), returned in the activations' dtype
        return jnp.matmul(x, self.kernel[...], preferred_element_type=jnp.float32).astype(x.dtype)


class RMSNorm(nnx.Module):
    """x / rms(x) * (1 + weight), all in fp32, cast back after the product (Gemma's order,
    unlike Llama's cast-then-multiply). `weight` is zero-centred, as Hugging Face stores it."""

    def __init__(self, weight: jax.Array, eps: float):
        self.weight = nnx.Param(weight)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


def rope_tables(theta: float, factor: float, head_dim: int, length: int):
    """cos, sin [T, head_dim] for positions 0..T-1, inverse frequencies divided by `factor`
    (linear scaling). numpy constants under jit: T is static."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim) / factor
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def apply_rope(x: jax.Array, cos, sin) -> jax.Array:
    """Rotate x [B, T, H, hd] in Hugging Face's rotate-half layout (pairs i, i + hd/2);
    cos, sin [T, hd] (positions arange(T)) or [B, T, hd] (each row's own positions)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[..., None, :].astype(x.dtype), sin[..., None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    """Grouped-query attention, q and k RMS-normed per head before RoPE: num_kv_heads K/V heads,
    each shared by num_heads / num_kv_heads query heads (never repeated in memory)."""

    def __init__(self, c: Gemma3Config, q: Linear, k: Linear, v: Linear, o: Linear,
                 q_norm: RMSNorm, k_norm: RMSNorm):
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.scale = c.query_pre_attn_scalar ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q, k, v, o
        self.q_norm, self.k_norm = q_norm, k_norm

    def __call__(self, x: jax.Array, cos, sin, mask: jax.Array, cache=None):
        """x [B, T, d], mask [B, 1, T, T] bool (True = may attend) -> [B, T, d].

        With `cache` = (KVCache, layer index): the T new keys/values are written into the
        cache and the queries attend all its S slots (mask [B, 1, T, S]) -> ([B, T, d], cache).
        """
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            kv, layer = cache
            kv, k, v = kv.update(layer, k, v)
        y = attention(q, k, v, mask, self.scale)
        y = self.o_proj(y.reshape(B, T, self.num_heads * self.head_dim))
        return y if cache is None else (y, kv)


class MLP(nnx.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, gate: Linear, up: Linear, down: Linear):
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))


class Block(nnx.Module):
    """Sandwich-norm residual block: x + post(attn(pre(x))), then x + post(mlp(pre(x))).
    `sliding` says which mask and RoPE table the layer takes."""

    def __init__(self, sliding: bool, input_norm: RMSNorm, attn: Attention, post_attn_norm: RMSNorm,
                 pre_mlp_norm: RMSNorm, mlp: MLP, post_mlp_norm: RMSNorm):
        self.sliding = sliding
        self.input_norm, self.attn, self.post_attn_norm = input_norm, attn, post_attn_norm
        self.pre_mlp_norm, self.mlp, self.post_mlp_norm = pre_mlp_norm, mlp, post_mlp_norm

    def __call__(self, x: jax.Array, cos, sin, mask: jax.Array, cache=None):
        """-> x, or (x, cache) with a cache (see Attention)."""
        if cache is None:
            y = self.attn(self.input_norm(x), cos, sin, mask)
        else:
            y, cache = self.attn(self.input_norm(x), cos, sin, mask, cache)
        x = x + self.post_attn_norm(y)
        x = x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x)))
        return x if cache is None else (x, cache)


def causal_masks(attention_mask: jax.Array | None, B: int, T: int, window: int):
    """(full, sliding) masks [B, 1, T, T] bool: query t sees keys s <= t that are not padding;
    the sliding one only those with t - s < window."""
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    full = jnp.asarray(s <= t)[None, None]
    sliding = jnp.asarray((s <= t) & (t - s < window))[None, None]
    if attention_mask is None:
        return jnp.broadcast_to(full, (B, 1, T, T)), jnp.broadcast_to(sliding, (B, 1, T, T))
    keys = attention_mask[:, None, None, :] > 0
    return full & keys, sliding & keys


# ----------------------------------------------------------------------------- model

class Gemma3(nnx.Module):
    """Token embedding * sqrt(d) -> blocks -> final RMSNorm -> LM head (tied: the embedding's
    `attend`) -> optional soft-capping."""

    def __init__(self, config: Gemma3Config, embedding, blocks: list[Block], norm: RMSNorm,
                 out_embedding=None):
        self.config = config
        self.embedding = embedding
        self.blocks = nnx.List(blocks)
        self.norm = norm
        self.tied = out_embedding is None
        self.out_embedding = embedding if out_embedding is None else out_embedding

    def embed(self, ids: jax.Array, dtype=None) -> jax.Array:
        """ids [B, T] -> the embedding's rows times sqrt(d) [B, T, d]; the scale is rounded to
        the activations' dtype first, as transformers does (bf16: sqrt(640) -> 25.25). `dtype`:
        the rows cast to it first (a compressed table decodes fp32 rows)."""
        x = self.embedding(ids)
        x = x if dtype is None else x.astype(dtype)
        return x * jnp.asarray(math.sqrt(self.config.hidden_size), jnp.float32).astype(x.dtype)

    def logits(self, h: jax.Array) -> jax.Array:
        """Final hidden states [B, T, d] -> logits [B, T, V], soft-capped if the config says so."""
        logits = self.out_embedding.attend(h)
        cap = self.config.final_logit_softcapping
        return logits if not cap else jnp.tanh(logits / cap) * cap

    def encode(self, ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids=None) -> jax.Array:
        """ids [B, T] int32, attention_mask [B, T] 0/1 -> final hidden states [B, T, d]."""
        c = self.config
        B, T = ids.shape
        full_rope = rope_tables(c.rope_theta, c.rope_factor, c.head_dim, T)
        local_rope = rope_tables(c.rope_local_theta, 1.0, c.head_dim, T)
        full_mask, sliding_mask = causal_masks(attention_mask, B, T, c.sliding_window)
        # in the parameters' dtype (bf16 under compute_dtype): a compressed table decodes fp32
        x = self.embed(ids, self.norm.weight[...].dtype)
        for block in self.blocks:
            if block.sliding:
                x = block(x, *local_rope, sliding_mask)
            else:
                x = block(x, *full_rope, full_mask)
        return self.norm(x)

    def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids=None) -> jax.Array:
        """ids [B, T] -> next-token logits [B, T, V]."""
        return self.logits(self.encode(ids, attention_mask))

    # generation with a KV cache (interface: dirjax/models/generate.py)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache of max_len slots per row and layer (sliding layers too: their mask,
        not the cache's size, keeps them to the window), in the parameters' dtype by default."""
        c = self.config
        dtype = dtype or self.norm.weight[...].dtype
        return KVCache.init(c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim, dtype)

    def decode(self, ids: jax.Array, cache: KVCache, positions: jax.Array,
               attention_mask: jax.Array | None = None,
               last: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """ids [B, T] at positions [B, T], written into the cache's next T slots
        (attention_mask [B, T] 0: padding) -> (next-token logits [B, T, V], cache)."""
        c = self.config
        # cos, sin gathered from the same tables `encode` uses: the same numbers at each position
        safe = jnp.clip(positions, 0, cache.max_len - 1)
        full_rope = [jnp.take(t, safe, axis=0)  # [B, T, hd]
                     for t in rope_tables(c.rope_theta, c.rope_factor, c.head_dim, cache.max_len)]
        local_rope = [jnp.take(t, safe, axis=0)
                      for t in rope_tables(c.rope_local_theta, 1.0, c.head_dim, cache.max_len)]
        cache = cache.fill(positions, attention_mask)
        full_mask, sliding_mask = cache.mask(positions), cache.mask(positions, c.sliding_window)
        # in the parameters' dtype: a bf16 model with a compressed table decodes in bf16
        x = self.embed(ids, self.norm.weight[...].dtype)
        for i, block in enumerate(self.blocks):
            if block.sliding:
                x, cache = block(x, *local_rope, sliding_mask, (cache, i))
            else:
                x, cache = block(x, *full_rope, full_mask, (cache, i))
        return self.logits(at_last(self.norm(x), last)), cache.advance(ids.shape[1])


# ----------------------------------------------------------------------------- loading

# Hugging Face tensor names, read by `from_state` and written by dirjax.saved.export_hf. The
# body's are `<prefix><name>` with the first prefix the checkpoint has: Gemma3ForCausalLM nests
# the body under `model.`; the multimodal Gemma3ForConditionalGeneration under
# `model.language_model.` (transformers v5) or `language_model.model.` (v4); Gemma3TextModel
# under nothing. An untied head is one of HEADS (full names).
PREFIXES = ("model.", "model.language_model.", "language_model.model.", "")
EMBEDDING = "embed_tokens.weight"                           # the token embedding [V, d]
HEADS = ("lm_head.weight", "language_model.lm_head.weight")  # an untied LM head [V, d]


def from_state(config: Gemma3Config, state: dict[str, np.ndarray], dtype=None) -> Gemma3:
    """Build a Gemma3 from Hugging Face-named tensors (each shape-checked) in `dtype` (fp32).
    Norm weights are Hugging Face's zero-centred ones (the model adds 1)."""
    c, dtype = config, dtype or jnp.float32
    d, hd, ff = c.hidden_size, c.head_dim, c.intermediate_size

    def param(name, shape, transpose=False, prefixes=PREFIXES):
        return jnp.asarray(take(state, name, shape, transpose, prefixes), dtype=dtype)

    def linear(name, n_in, n_out):  # HF [out, in] -> our [in, out]
        return Linear(param(name + ".weight", (n_in, n_out), transpose=True))

    def norm(name, size=d):
        return RMSNorm(param(name + ".weight", (size,)), c.rms_norm_eps)

    blocks = []
    for i, kind in enumerate(c.layer_types):
        p = f"layers.{i}."
        attn = Attention(c, linear(p + "self_attn.q_proj", d, c.num_heads * hd),
                         linear(p + "self_attn.k_proj", d, c.num_kv_heads * hd),
                         linear(p + "self_attn.v_proj", d, c.num_kv_heads * hd),
                         linear(p + "self_attn.o_proj", c.num_heads * hd, d),
                         norm(p + "self_attn.q_norm", hd), norm(p + "self_attn.k_norm", hd))
        mlp = MLP(linear(p + "mlp.gate_proj", d, ff), linear(p + "mlp.up_proj", d, ff),
                  linear(p + "mlp.down_proj", ff, d))
        blocks.append(Block(kind == SLIDING, norm(p + "input_layernorm"), attn,
                            norm(p + "post_attention_layernorm"),
                            norm(p + "pre_feedforward_layernorm"), mlp,
                            norm(p + "post_feedforward_layernorm")))
    embedding = Embedding(param(EMBEDDING, (c.vocab_size, d)))
    # tied unless the config unties the head and the checkpoint has its own lm_head
    head_name = next((n for n in HEADS if n in state), None)
    tied = c.tie_word_embeddings or head_name is None
    head = None if tied else Embedding(param(head_name, (c.vocab_size, d), prefixes=("",)))
    return Gemma3(c, embedding, blocks, norm("norm"), head)


def from_hf_state(config: dict, state: dict[str, np.ndarray], dtype=None) -> Gemma3:
    """A Gemma3 from a Hugging Face config.json dict and its tensors (see `from_state`)."""
    return from_state(Gemma3Config.from_hf(config), state, dtype)


def from_hf_dir(path: str | os.PathLike, dtype=None, tokenizer: Path | None = None):
    """(Gemma3, tokenizer) from a Hugging Face directory: config.json, *.safetensors, tokenizer
    (that of the directory `tokenizer` when given). A multimodal
    Gemma3ForConditionalGeneration checkpoint gives its text decoder."""
    config = Gemma3Config.from_hf(read_config(path))
    model = from_state(config, read_safetensors(path), dtype)
    return model, load_tokenizer(tokenizer or path)


def from_gguf(path: str | os.PathLike, dtype=None, tokenizer: Path | None = None):
    """(Gemma3, tokenizer) from a llama.cpp GGUF file, dequantised to fp32 (or `dtype`); the
    tokenizer is the file's own, or that of the directory `tokenizer` when given."""
    hf_config, state = read_gguf(path)
    if hf_config.get("model_type") != "gemma3_text":
        raise WeightsError(f"{path}: not a Gemma 3 GGUF ({hf_config.get('model_type')})")
    model = from_hf_state(hf_config, state, dtype)
    return model, load_tokenizer(tokenizer) if tokenizer else gguf_tokenizer(path)
