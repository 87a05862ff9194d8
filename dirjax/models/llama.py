"""Llama-family causal language model (Llama 2/3, SmolLM, Mistral-style dense) in Flax NNX.

Read top to bottom: the config, the blocks (RMSNorm, RoPE, grouped-query attention, SwiGLU
MLP), the model, then loading from a Hugging Face directory (safetensors) or a GGUF file.
Both loaders go through `from_state`, the one explicit mapping from Hugging Face tensor names
to our modules, with a shape assert on every tensor. Batches are right-padded and
positions are arange(T), as everywhere in dirjax; `decode` runs tokens at any positions against
a KV cache (`init_cache`; the interface is in dirjax/models/generate.py).
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
from dirjax.models.weights import load_tokenizer, read_config, read_safetensors, take


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int          # < num_heads: grouped-query attention
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # RoPE scaling ("default": none; "linear"; "llama3" with the four fields below)
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    tie_word_embeddings: bool = False

    @classmethod
    def from_hf(cls, c: dict) -> "LlamaConfig":
        """From a Hugging Face `config.json` dict (transformers v4 or v5 spelling of RoPE)."""
        for key in ("attention_bias", "mlp_bias"):
            if c.get(key):
                raise WeightsError(f"Llama checkpoints with {key}=true are not supported")
        if c.get("hidden_act", "silu") != "silu":
            raise WeightsError(f"Llama hidden_act {c['hidden_act']!r} is not supported (silu only)")
        # v5 keeps theta and scaling in `rope_parameters`; v4 in `rope_theta` + `rope_scaling`
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise WeightsError(
                f"RoPE scaling {rope_type!r} is not supported (default, linear, llama3)")
        heads = c["num_attention_heads"]
        return cls(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
            num_layers=c["num_hidden_layers"], num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            intermediate_size=c["intermediate_size"],
            rms_norm_eps=c.get("rms_norm_eps", 1e-5),
            rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
            rope_type=rope_type,
            rope_factor=rope.get("factor", 1.0),
            rope_low_freq_factor=rope.get("low_freq_factor", 1.0),
            rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
            rope_original_max_positions=rope.get(
                "original_max_position_embeddings", c.get("max_position_embeddings", 8192)),
            tie_word_embeddings=c.get("tie_word_embeddings", False),
        )


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
    """x / rms(x) * weight, computed in fp32 as Hugging Face does."""

    def __init__(self, weight: jax.Array, eps: float):
        self.weight = nnx.Param(weight)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


def rope_frequencies(c: LlamaConfig) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] of RoPE, with Llama 3's or linear scaling."""
    inv_freq = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float32) / c.head_dim)
    if c.rope_type == "linear":
        return inv_freq / c.rope_factor
    if c.rope_type == "llama3":
        # long wavelengths divided by `factor`, short ones kept, a smooth ramp in between
        low_wavelen = c.rope_original_max_positions / c.rope_low_freq_factor
        high_wavelen = c.rope_original_max_positions / c.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / c.rope_factor, inv_freq)
        smooth = ((c.rope_original_max_positions / wavelen - c.rope_low_freq_factor)
                  / (c.rope_high_freq_factor - c.rope_low_freq_factor))
        smoothed = (1 - smooth) * scaled / c.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(c: LlamaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, head_dim] for positions 0..T-1 (constants under jit: T is static)."""
    angles = np.arange(length, dtype=np.float32)[:, None] * rope_frequencies(c)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


# a masked key's bias: exp(score + MASKED - max) is 0, and a row with every key masked stays
# finite (uniform)
MASKED = -0.7 * float(np.finfo(np.float32).max)


def apply_rope(x: jax.Array, cos, sin) -> jax.Array:
    """Rotate x [B, T, H, hd] in Hugging Face's rotate-half layout (pairs i, i + hd/2);
    cos, sin [T, hd] (positions arange(T)) or [B, T, hd] (each row's own positions)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[..., None, :].astype(x.dtype), sin[..., None, :].astype(x.dtype)
    return x * cos + rotated * sin


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              scale: float) -> jax.Array:
    """Grouped-query attention, softmax in fp32: q [B, T, N, hd], k, v [B, S, K, hd] (each K/V
    head serves G = N / K query heads), mask [B, 1, T, S] bool (True = may attend) ->
    [B, T, N, hd]. Fully masked rows (padding) attend uniformly, as in
    jax.nn.dot_product_attention.

    Written for XLA:CPU to run it as one fused kernel (XNNPACK): the scores are laid out
    [B, K, G, T, S], the order a batched matmul writes them and the softmax reads them; the
    scale goes on q and the mask is an additive bias. jax.nn.dot_product_attention's vmap over
    G leaves G between T and S, and its scale and mask are a separate pass: XLA:CPU then
    copies the [T, S]-sized scores through two transposes and a select per layer. Both
    products sum in fp32 (bf16 operands at the matrix units' rate)."""
    B, T, N, hd = q.shape
    K = k.shape[2]
    q = (q * scale).reshape(B, T, K, N // K, hd).transpose(0, 2, 3, 1, 4)     # [B, K, G, T, hd]
    bias = jnp.where(mask, 0.0, MASKED)[:, :, None]                             # [B, 1, 1, T, S]
    s = jnp.einsum("bkgtd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) + bias
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    y = jnp.einsum("bkgts,bskd->bkgtd", p, v, preferred_element_type=jnp.float32)
    return y.astype(v.dtype).transpose(0, 3, 1, 2, 4).reshape(B, T, N, hd)


class Attention(nnx.Module):
    """Causal grouped-query attention: num_kv_heads K/V heads, each shared by
    num_heads / num_kv_heads query heads (never repeated in memory)."""

    def __init__(self, c: LlamaConfig, q: Linear, k: Linear, v: Linear, o: Linear):
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q, k, v, o

    def __call__(self, x: jax.Array, cos, sin, mask: jax.Array, cache=None):
        """x [B, T, d], mask [B, 1, T, T] bool (True = may attend) -> [B, T, d].

        With `cache` = (KVCache, layer index): the T new keys/values are written into the
        cache and the queries attend all its S slots (mask [B, 1, T, S]) -> ([B, T, d], cache).
        """
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            kv, layer = cache
            kv, k, v = kv.update(layer, k, v)
        y = attention(q, k, v, mask, self.head_dim ** -0.5)
        y = self.o_proj(y.reshape(B, T, self.num_heads * self.head_dim))
        return y if cache is None else (y, kv)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, gate: Linear, up: Linear, down: Linear):
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn_norm: RMSNorm, attn: Attention, mlp_norm: RMSNorm, mlp: MLP):
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def __call__(self, x: jax.Array, cos, sin, mask: jax.Array, cache=None):
        """-> x, or (x, cache) with a cache (see Attention)."""
        if cache is None:
            x = x + self.attn(self.attn_norm(x), cos, sin, mask)
            return x + self.mlp(self.mlp_norm(x))
        y, kv = self.attn(self.attn_norm(x), cos, sin, mask, cache)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), kv


def causal_mask(attention_mask: jax.Array | None, B: int, T: int) -> jax.Array:
    """[B, 1, T, T] bool: query t sees keys s <= t that are not padding."""
    mask = jnp.tril(jnp.ones((T, T), dtype=bool))[None, None]
    if attention_mask is None:
        return jnp.broadcast_to(mask, (B, 1, T, T))
    return mask & (attention_mask[:, None, None, :] > 0)


# ----------------------------------------------------------------------------- model

class Llama(nnx.Module):
    """Token embedding -> blocks -> final RMSNorm -> LM head (tied: the embedding's `attend`)."""

    def __init__(self, config: LlamaConfig, embedding, blocks: list[Block], norm: RMSNorm,
                 out_embedding=None):
        self.config = config
        self.embedding = embedding
        self.blocks = nnx.List(blocks)
        self.norm = norm
        self.tied = out_embedding is None
        self.out_embedding = embedding if out_embedding is None else out_embedding

    def encode(self, ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids=None) -> jax.Array:
        """ids [B, T] int32, attention_mask [B, T] 0/1 -> final hidden states [B, T, d]."""
        B, T = ids.shape
        cos, sin = rope_tables(self.config, T)
        mask = causal_mask(attention_mask, B, T)
        # in the parameters' dtype (bf16 under compute_dtype): a compressed table decodes fp32
        x = self.embedding(ids).astype(self.norm.weight[...].dtype)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x)

    def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids=None) -> jax.Array:
        """ids [B, T] -> next-token logits [B, T, V]."""
        return self.out_embedding.attend(self.encode(ids, attention_mask))

    # generation with a KV cache (interface: dirjax/models/generate.py)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache of max_len slots per row, in the parameters' dtype by default."""
        c = self.config
        dtype = dtype or self.norm.weight[...].dtype
        return KVCache.init(c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim, dtype)

    def decode(self, ids: jax.Array, cache: KVCache, positions: jax.Array,
               attention_mask: jax.Array | None = None,
               last: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """ids [B, T] at positions [B, T], written into the cache's next T slots
        (attention_mask [B, T] 0: padding) -> (next-token logits [B, T, V], cache)."""
        # cos, sin gathered from the same tables `encode` uses: the same numbers at each position
        cos, sin = rope_tables(self.config, cache.max_len)
        safe = jnp.clip(positions, 0, cache.max_len - 1)
        cos, sin = jnp.take(cos, safe, axis=0), jnp.take(sin, safe, axis=0)  # [B, T, hd]
        cache = cache.fill(positions, attention_mask)
        mask = cache.mask(positions)
        # in the parameters' dtype: a bf16 model with a compressed table decodes in bf16
        x = self.embedding(ids).astype(self.norm.weight[...].dtype)
        for i, block in enumerate(self.blocks):
            x, cache = block(x, cos, sin, mask, (cache, i))
        logits = self.out_embedding.attend(at_last(self.norm(x), last))
        return logits, cache.advance(ids.shape[1])


# ----------------------------------------------------------------------------- loading

# Hugging Face tensor names, read by `from_state` and written by dirjax.saved.export_hf. The
# body's are `<prefix><name>` with the first prefix the checkpoint has: LlamaForCausalLM nests
# the body under `model.`, LlamaModel does not. An untied head is one of HEADS (full names).
PREFIXES = ("model.", "")
EMBEDDING = "embed_tokens.weight"   # the token embedding [V, d]
HEADS = ("lm_head.weight",)         # an untied LM head [V, d]


def from_state(config: LlamaConfig, state: dict[str, np.ndarray], dtype=None) -> Llama:
    """Build a Llama from Hugging Face-named tensors (each shape-checked) in `dtype` (fp32)."""
    c, dtype = config, dtype or jnp.float32
    d, hd, ff = c.hidden_size, c.head_dim, c.intermediate_size

    def param(name, shape, transpose=False, prefixes=PREFIXES):
        return jnp.asarray(take(state, name, shape, transpose, prefixes), dtype=dtype)

    def linear(name, n_in, n_out):  # HF [out, in] -> our [in, out]
        return Linear(param(name + ".weight", (n_in, n_out), transpose=True))

    def norm(name):
        return RMSNorm(param(name + ".weight", (d,)), c.rms_norm_eps)

    blocks = []
    for i in range(c.num_layers):
        p = f"layers.{i}."
        attn = Attention(c, linear(p + "self_attn.q_proj", d, c.num_heads * hd),
                         linear(p + "self_attn.k_proj", d, c.num_kv_heads * hd),
                         linear(p + "self_attn.v_proj", d, c.num_kv_heads * hd),
                         linear(p + "self_attn.o_proj", c.num_heads * hd, d))
        mlp = MLP(linear(p + "mlp.gate_proj", d, ff), linear(p + "mlp.up_proj", d, ff),
                  linear(p + "mlp.down_proj", ff, d))
        blocks.append(Block(norm(p + "input_layernorm"), attn,
                            norm(p + "post_attention_layernorm"), mlp))
    embedding = Embedding(param(EMBEDDING, (c.vocab_size, d)))
    # tied unless the config unties the head and the checkpoint has its own lm_head
    head_name = next((n for n in HEADS if n in state), None)
    tied = c.tie_word_embeddings or head_name is None
    head = None if tied else Embedding(param(head_name, (c.vocab_size, d), prefixes=("",)))
    return Llama(c, embedding, blocks, norm("norm"), head)


def from_hf_state(config: dict, state: dict[str, np.ndarray], dtype=None) -> Llama:
    """A Llama from a Hugging Face config.json dict and its tensors (see `from_state`)."""
    return from_state(LlamaConfig.from_hf(config), state, dtype)


def from_hf_dir(path: str | os.PathLike, dtype=None, tokenizer: Path | None = None):
    """(Llama, tokenizer) from a Hugging Face directory: config.json, *.safetensors, tokenizer
    (that of the directory `tokenizer` when given)."""
    config = LlamaConfig.from_hf(read_config(path))
    model = from_state(config, read_safetensors(path), dtype)
    return model, load_tokenizer(tokenizer or path)


def from_gguf(path: str | os.PathLike, dtype=None, tokenizer: Path | None = None):
    """(Llama, tokenizer) from a llama.cpp GGUF file, dequantised to fp32 (or `dtype`); the
    tokenizer is the file's own, or that of the directory `tokenizer` when given."""
    model = from_hf_state(*read_gguf(path), dtype)
    return model, load_tokenizer(tokenizer) if tokenizer else gguf_tokenizer(path)
