"""GPT-2 in Flax NNX, read top to bottom: config, attention, block, model, weight loading.

Loads Hugging Face `GPT2LMHeadModel` / `GPT2Model` checkpoints (safetensors) with logits equal
to transformers' PyTorch model (tests/test_gpt2.py). The token embedding `wte` is a swappable
`dirjax.embedding.Embedding` in `model.embedding`; the LM head is tied to it
(`model.out_embedding is model.embedding`). `decode` runs tokens against a KV cache
(`init_cache`; the interface is in dirjax/models/generate.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax.embedding import Embedding, linear_dot_f32
from dirjax.errors import ConfigError, WeightsError
from dirjax.models.generate import KVCache, at_last
from dirjax.models.weights import check_loaded, load_tokenizer, read_config, read_safetensors, take

NEG_INF = -1e9  # additive mask: exp(NEG_INF - max) is exactly 0 in fp32, and never NaN

ACTIVATIONS = {
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "gelu": partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 1024
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf(cls, c: dict) -> GPT2Config:
        """From a Hugging Face GPT-2 config.json (as a dict)."""
        if c.get("scale_attn_by_inverse_layer_idx") or not c.get("scale_attn_weights", True):
            raise ConfigError(
                "GPT-2 checkpoint with non-standard attention scaling is not supported")
        act = c.get("activation_function", "gelu_new")
        if act not in ACTIVATIONS:
            raise ConfigError(
                f"GPT-2 activation {act!r} is not supported ({', '.join(ACTIVATIONS)})")
        d = c.get("n_embd", 768)
        return cls(vocab_size=c["vocab_size"], hidden_size=d, num_layers=c.get("n_layer", 12),
                   num_heads=c.get("n_head", 12), max_positions=c.get("n_positions", 1024),
                   intermediate_size=c.get("n_inner") or 4 * d,
                   layer_norm_eps=c.get("layer_norm_epsilon", 1e-5), activation=act,
                   tie_word_embeddings=c.get("tie_word_embeddings", True))


def attention_bias(mask: jax.Array | None, t: int) -> jax.Array:
    """Causal + key-padding additive bias `[B or 1, 1, T, T]` (fp32) from a 0/1 mask `[B, T]`."""
    allowed = jnp.tril(jnp.ones((1, 1, t, t), bool))
    if mask is not None:
        allowed = allowed & (mask[:, None, None, :] > 0)
    return jnp.where(allowed, 0.0, NEG_INF).astype(jnp.float32)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """Scaled dot-product attention, softmax in fp32. q, k, v `[B, T, H, dh]` -> `[B, T, H, dh]`.
    The scale goes on q, so that XLA:CPU runs both products, the bias and the softmax as one
    fused kernel (a scale on the [T, T] scores is a pass of its own); both sum in fp32."""
    q = (q * (1.0 / math.sqrt(q.shape[-1]))).transpose(0, 2, 1, 3)           # [B, H, T, dh]
    scores = jnp.einsum("bhqd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(v.dtype)
    y = jnp.einsum("bhqk,bkhd->bhqd", probs, v, preferred_element_type=jnp.float32)
    return y.astype(v.dtype).transpose(0, 2, 1, 3)



def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    # kernel [in, out], the layout of HF's Conv1D weights: they load without a transpose
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(0.02), rngs=rngs,
                      dot_general=linear_dot_f32)


def _layer_norm(d: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # two-pass variance, as PyTorch computes it
    return nnx.LayerNorm(d, epsilon=eps, use_fast_variance=False, rngs=rngs)


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.c_attn = _linear(d, 3 * d, rngs)  # q, k, v in one matmul
        self.c_proj = _linear(d, d, rngs)

    def __call__(self, x: jax.Array, bias: jax.Array, cache=None):
        """x `[B, T, d]`, bias `[B, 1, T, T]` -> `[B, T, d]`.

        With `cache` = (KVCache, layer index): the T new keys/values are written into the
        cache and the queries attend all its S slots (bias `[B, 1, T, S]`) -> (`[B, T, d]`, cache).
        """
        b, t, d = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.num_heads, d // self.num_heads) for z in (q, k, v))
        if cache is not None:
            kv, layer = cache
            kv, k, v = kv.update(layer, k, v)
        y = self.c_proj(attention(q, k, v, bias).reshape(b, t, d))
        return y if cache is None else (y, kv)


class MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        self.c_fc = _linear(cfg.hidden_size, cfg.intermediate_size, rngs)
        self.c_proj = _linear(cfg.intermediate_size, cfg.hidden_size, rngs)
        self.activation = cfg.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x)))


class Block(nnx.Module):
    """Pre-LayerNorm residual block."""

    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.attn = CausalSelfAttention(cfg, rngs)
        self.ln_2 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array, bias: jax.Array, cache=None):
        """-> x, or (x, cache) with a cache (see CausalSelfAttention)."""
        if cache is None:
            x = x + self.attn(self.ln_1(x), bias)
            return x + self.mlp(self.ln_2(x))
        y, kv = self.attn(self.ln_1(x), bias, cache)
        x = x + y
        return x + self.mlp(self.ln_2(x)), kv


class GPT2(nnx.Module):
    """GPT-2 language model. `embedding` (wte) is swappable; `out_embedding` gives the logits."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        cfg = self.config = config
        self.embedding = Embedding(
            0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size)))
        self.wpe = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (cfg.max_positions, cfg.hidden_size)))
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.ln_f = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.tied = cfg.tie_word_embeddings
        if self.tied:
            self.out_embedding = self.embedding
        else:  # an untied lm_head [V, d]
            self.out_embedding = Embedding(
                0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size)))

    def encode(self, ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None) -> jax.Array:
        """ids `[B, T]` int, right-padded with attention_mask `[B, T]` 0/1 -> hidden `[B, T, d]`
        after ln_f. Positions are arange(T). `token_type_ids` is ignored (GPT-2 has no segments).
        """
        t = ids.shape[1]
        if t > self.config.max_positions:
            raise ConfigError(f"sequence of {t} tokens, longer than the model's "
                              f"{self.config.max_positions} positions")
        wpe = self.wpe[...]     # the parameters' dtype: a compressed table decodes fp32 rows
        x = self.embedding(ids).astype(wpe.dtype) + wpe[:t]
        bias = attention_bias(attention_mask, t)
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_f(x)

    def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        """Logits `[B, T, V]` of the next token."""
        return self.out_embedding.attend(self.encode(ids, attention_mask))

    # generation with a KV cache (interface: dirjax/models/generate.py)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache of max_len slots per row, in the parameters' dtype by default."""
        cfg = self.config
        if max_len > cfg.max_positions:
            raise ConfigError(f"cache of {max_len} tokens, longer than the model's "
                              f"{cfg.max_positions} positions")
        dtype = dtype or self.wpe[...].dtype
        return KVCache.init(cfg.num_layers, batch, max_len, cfg.num_heads,
                            cfg.hidden_size // cfg.num_heads, dtype)

    def decode(self, ids: jax.Array, cache: KVCache, positions: jax.Array,
               attention_mask: jax.Array | None = None,
               last: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """ids `[B, T]` at positions `[B, T]`, written into the cache's next T slots
        (attention_mask `[B, T]` 0: padding) -> (next-token logits `[B, T, V]`, cache)."""
        # in the parameters' dtype: a bf16 model with a compressed table decodes in bf16
        wpe = self.wpe[...]
        x = self.embedding(ids).astype(wpe.dtype) + jnp.take(wpe, positions, axis=0, mode="clip")
        cache = cache.fill(positions, attention_mask)
        bias = jnp.where(cache.mask(positions), 0.0, NEG_INF).astype(jnp.float32)
        for i, block in enumerate(self.blocks):
            x, cache = block(x, bias, (cache, i))
        logits = self.out_embedding.attend(at_last(self.ln_f(x), last))
        return logits, cache.advance(ids.shape[1])


# ----------------------------------------------------------------------------- loading

# Hugging Face tensor names, read by `from_state` and written by dirjax.saved.export_hf. The
# body's are `<prefix><name>` with the first prefix the checkpoint has: GPT2LMHeadModel's keys,
# then GPT2Model's (and the original gpt2 repo's). An untied head is one of HEADS (full names).
PREFIXES = ("transformer.", "")
EMBEDDING = "wte.weight"            # the token embedding [V, d]
HEADS = ("lm_head.weight",)         # an untied LM head [V, d]


def from_state(config: GPT2Config, state: dict[str, np.ndarray], dtype=None) -> GPT2:
    """Build a GPT2 from Hugging Face-named tensors (each shape-checked) in `dtype` (fp32).

    HF GPT-2 uses Conv1D layers whose weights are stored [in, out], as nnx.Linear's kernel:
    nothing is transposed. The module tree is built under `nnx.eval_shape` (no random weights
    allocated), then every parameter is filled from `state` and asserted filled.
    """
    model = nnx.eval_shape(lambda: GPT2(config, rngs=nnx.Rngs(0)))
    dtype = dtype or jnp.float32

    def put(param: nnx.Param, name: str, prefixes=PREFIXES):
        param.set_value(jnp.asarray(take(state, name, param.shape, prefixes=prefixes), dtype))

    def put_norm(ln: nnx.LayerNorm, name: str):
        put(ln.scale, name + ".weight")
        put(ln.bias, name + ".bias")

    def put_linear(lin: nnx.Linear, name: str):
        put(lin.kernel, name + ".weight")
        put(lin.bias, name + ".bias")

    put(model.embedding.weight, EMBEDDING)
    put(model.wpe, "wpe.weight")
    for i, block in enumerate(model.blocks):
        p = f"h.{i}."
        put_norm(block.ln_1, p + "ln_1")
        put_linear(block.attn.c_attn, p + "attn.c_attn")
        put_linear(block.attn.c_proj, p + "attn.c_proj")
        put_norm(block.ln_2, p + "ln_2")
        put_linear(block.mlp.c_fc, p + "mlp.c_fc")
        put_linear(block.mlp.c_proj, p + "mlp.c_proj")
    put_norm(model.ln_f, "ln_f")
    if not model.tied:
        head = next((n for n in HEADS if n in state), HEADS[0])
        put(model.out_embedding.weight, head, prefixes=("",))
    n = len(model.blocks)
    if any(p + f"h.{n}.ln_1.weight" in state for p in PREFIXES):
        raise WeightsError(f"checkpoint has more layers than its config's n_layer={n}")
    check_loaded(model)
    return model


def from_hf_state(config: dict, state: dict[str, np.ndarray], dtype=None) -> GPT2:
    """A GPT2 from a Hugging Face config.json dict and its tensors (see `from_state`)."""
    return from_state(GPT2Config.from_hf(config), state, dtype)


def from_hf_dir(path: str | os.PathLike, dtype=None, tokenizer: Path | None = None):
    """`(GPT2, tokenizer)` from a Hugging Face directory; parameters fp32 unless `dtype`; the
    tokenizer of the directory `tokenizer` when given, else the checkpoint's."""
    config = GPT2Config.from_hf(read_config(path))
    model = from_state(config, read_safetensors(path), dtype)
    # GPT-2 has no pad token: pad_right reuses eos (the attention mask hides pad positions)
    return model, load_tokenizer(tokenizer or path, default_class="GPT2Tokenizer")
