"""BERT in Flax NNX, read top to bottom: config, attention, layer, model, weight loading.

Loads Hugging Face `BertModel` checkpoints (keys without prefix, e.g. all-MiniLM-L6-v2) and
`BertForMaskedLM` / `BertForPreTraining` ones (`bert.` prefix, `cls.predictions.*`), with
hidden states and MLM logits equal to transformers' PyTorch model (tests/test_bert.py).
The word embedding is a swappable `dirjax.embedding.Embedding` in `model.embedding`; the MLM
decoder is tied to it (`model.out_embedding is model.embedding`) and has its own bias [V].
Without an MLM head `out_embedding` is None and calling the model raises a ConfigError.
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

from dirjax.embedding import Embedding, attend_chunk, linear_dot_f32
from dirjax.errors import ConfigError, WeightsError
from dirjax.models.weights import check_loaded, load_tokenizer, read_config, read_safetensors, take

NEG_INF = -1e9  # additive mask: exp(NEG_INF - max) is exactly 0 in fp32, and never NaN

ACTIVATIONS = {
    "gelu": partial(jax.nn.gelu, approximate=False),  # BERT's gelu is the exact (erf) one
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    pooler: bool = True          # BertModel has one, BertForMaskedLM does not
    mlm_head: bool = True        # cls.predictions.*: transform + decoder tied to the embedding
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf(cls, c: dict, pooler: bool = True, mlm_head: bool = True) -> BertConfig:
        """From a Hugging Face BERT config.json (as a dict); which heads exist is read from the
        checkpoint's keys, so it is passed in."""
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"BERT position_embedding_type {c['position_embedding_type']!r} "
                              "is not supported (only 'absolute')")
        act = c.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ConfigError(
                f"BERT hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)})")
        return cls(vocab_size=c["vocab_size"], hidden_size=c.get("hidden_size", 768),
                   num_layers=c.get("num_hidden_layers", 12),
                   num_heads=c.get("num_attention_heads", 12),
                   intermediate_size=c.get("intermediate_size", 3072),
                   max_positions=c.get("max_position_embeddings", 512),
                   type_vocab_size=c.get("type_vocab_size", 2),
                   layer_norm_eps=c.get("layer_norm_eps", 1e-12), activation=act,
                   pooler=pooler, mlm_head=mlm_head,
                   tie_word_embeddings=c.get("tie_word_embeddings", True))


def attention_bias(mask: jax.Array | None, t: int) -> jax.Array:
    """Key-padding additive bias `[B or 1, 1, 1, T]` (fp32) from a 0/1 mask `[B, T]`."""
    if mask is None:
        return jnp.zeros((1, 1, 1, t), jnp.float32)
    return jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)


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
    # kernel [in, out]: HF's nn.Linear weights are [out, in] and load transposed
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(0.02), rngs=rngs,
                      dot_general=linear_dot_f32)


def _layer_norm(d: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # two-pass variance, as PyTorch computes it
    return nnx.LayerNorm(d, epsilon=eps, use_fast_variance=False, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with its output projection, residual and LayerNorm (post-LN)."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query = _linear(d, d, rngs)
        self.key = _linear(d, d, rngs)
        self.value = _linear(d, d, rngs)
        self.output = _linear(d, d, rngs)
        self.ln = _layer_norm(d, cfg.layer_norm_eps, rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x `[B, T, d]`, bias `[B, 1, 1, T]` -> `[B, T, d]`."""
        b, t, d = x.shape
        q, k, v = (f(x).reshape(b, t, self.num_heads, d // self.num_heads)
                   for f in (self.query, self.key, self.value))
        y = self.output(attention(q, k, v, bias).reshape(b, t, d))
        return self.ln(x + y)


class Layer(nnx.Module):
    """Post-LayerNorm encoder layer: attention, then feed-forward, each with residual + LN."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, rngs)
        self.intermediate = _linear(cfg.hidden_size, cfg.intermediate_size, rngs)
        self.output = _linear(cfg.intermediate_size, cfg.hidden_size, rngs)
        self.ln = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.activation = cfg.activation

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        x = self.attention(x, bias)
        return self.ln(x + self.output(ACTIVATIONS[self.activation](self.intermediate(x))))


class Bert(nnx.Module):
    """BERT encoder with optional pooler and MLM head. `embedding` (word embeddings) is
    swappable."""

    objective = "masked"   # what its LM head predicts (causal models: "causal")

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        d = cfg.hidden_size
        normal = nnx.initializers.normal(0.02)
        self.embedding = Embedding(normal(rngs.params(), (cfg.vocab_size, d)))
        self.position = nnx.Param(normal(rngs.params(), (cfg.max_positions, d)))
        self.token_type = nnx.Param(normal(rngs.params(), (cfg.type_vocab_size, d)))
        self.embed_ln = _layer_norm(d, cfg.layer_norm_eps, rngs)
        self.layers = nnx.List([Layer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.pooler = _linear(d, d, rngs) if cfg.pooler else None
        self.tied = cfg.mlm_head and cfg.tie_word_embeddings
        if cfg.mlm_head:
            self.mlm_dense = _linear(d, d, rngs)
            self.mlm_ln = _layer_norm(d, cfg.layer_norm_eps, rngs)
            self.mlm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,)))
            self.out_embedding = (self.embedding if self.tied
                                  else Embedding(normal(rngs.params(), (cfg.vocab_size, d))))
        else:
            self.mlm_dense = self.mlm_ln = self.mlm_bias = self.out_embedding = None

    def encode(self, ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None) -> jax.Array:
        """ids `[B, T]` int, right-padded with attention_mask `[B, T]` 0/1, token_type_ids `[B, T]`
        (default 0) -> last hidden states `[B, T, d]`. Positions are arange(T)."""
        t = ids.shape[1]
        if t > self.config.max_positions:
            raise ConfigError(f"sequence of {t} tokens, longer than the model's "
                              f"{self.config.max_positions} positions")
        position = self.position[...]   # its dtype: a compressed table decodes fp32 rows
        x = self.embedding(ids).astype(position.dtype) + position[:t]
        if token_type_ids is None:
            x = x + self.token_type[...][0]
        else:
            x = x + jnp.take(self.token_type[...], token_type_ids, axis=0)
        x = self.embed_ln(x)
        bias = attention_bias(attention_mask, t)
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def pool(self, h: jax.Array) -> jax.Array:
        """HF pooler output `[B, d]`: tanh(dense(h[:, 0])) of the [CLS] position of h
        `[B, T, d]`."""
        if self.pooler is None:
            raise ConfigError("this BERT checkpoint has no pooler (BertForMaskedLM)")
        return jnp.tanh(self.pooler(h[:, 0]))

    def mlm_logits(self, h: jax.Array) -> jax.Array:
        """Masked-LM logits `[B, T, V]` in fp32 from the encoder's hidden states h `[B, T, d]`
        (transform, tied decoder, bias): a scorer's log-sum-exp reads them unrounded whatever
        the compute dtype."""
        self._require_mlm_head()
        h = self.mlm_ln(ACTIVATIONS[self.config.activation](self.mlm_dense(h)))
        logits = attend_chunk(self.out_embedding, h, 0, self.out_embedding.vocab_size)
        return logits + self.mlm_bias[...].astype(jnp.float32)

    def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        """Masked-LM logits `[B, T, V]` in the activations' dtype."""
        self._require_mlm_head()
        h = self.encode(ids, attention_mask, token_type_ids)
        return self.mlm_logits(h).astype(h.dtype)

    def _require_mlm_head(self) -> None:
        if self.out_embedding is None:
            raise ConfigError("this BERT checkpoint has no MLM head (a BertModel): use encode() "
                              "for hidden states, or a BertForMaskedLM checkpoint for logits")


# ----------------------------------------------------------------------------- loading

# Hugging Face tensor names, read by `from_state`. The body's are `<prefix><name>` with the
# first prefix the checkpoint has: BertForMaskedLM / BertForPreTraining keys, then BertModel's.
# An untied MLM decoder is one of HEADS (full names).
PREFIXES = ("bert.", "")
EMBEDDING = "embeddings.word_embeddings.weight"     # the word embedding [V, d]
HEADS = ("cls.predictions.decoder.weight",)         # an untied MLM decoder [V, d]
POOLER = "pooler.dense"                             # BertModel's, under a prefix
MLM = "cls.predictions."                            # the MLM head's tensors, full names


def from_state(config: BertConfig, state: dict[str, np.ndarray], dtype=None) -> Bert:
    """Build a Bert from Hugging Face-named tensors (each shape-checked) in `dtype` (fp32).

    nn.Linear weights are stored [out, in] and are transposed into nnx.Linear's [in, out]
    kernel. The module tree is built under `nnx.eval_shape` (no random weights allocated),
    then every parameter is filled from `state` and asserted filled.
    """
    model = nnx.eval_shape(lambda: Bert(config, rngs=nnx.Rngs(0)))
    dtype = dtype or jnp.float32

    def put(param: nnx.Param, name: str, transpose: bool = False, prefixes=PREFIXES):
        param.set_value(jnp.asarray(take(state, name, param.shape, transpose, prefixes), dtype))

    def put_norm(ln: nnx.LayerNorm, name: str):
        put(ln.scale, name + ".weight")
        put(ln.bias, name + ".bias")

    def put_linear(lin: nnx.Linear, name: str):
        put(lin.kernel, name + ".weight", transpose=True)
        put(lin.bias, name + ".bias")

    put(model.embedding.weight, EMBEDDING)
    put(model.position, "embeddings.position_embeddings.weight")
    put(model.token_type, "embeddings.token_type_embeddings.weight")
    put_norm(model.embed_ln, "embeddings.LayerNorm")
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}."
        put_linear(layer.attention.query, p + "attention.self.query")
        put_linear(layer.attention.key, p + "attention.self.key")
        put_linear(layer.attention.value, p + "attention.self.value")
        put_linear(layer.attention.output, p + "attention.output.dense")
        put_norm(layer.attention.ln, p + "attention.output.LayerNorm")
        put_linear(layer.intermediate, p + "intermediate.dense")
        put_linear(layer.output, p + "output.dense")
        put_norm(layer.ln, p + "output.LayerNorm")
    if model.pooler is not None:
        put_linear(model.pooler, POOLER)
    if model.out_embedding is not None:
        put_linear(model.mlm_dense, MLM + "transform.dense")
        put_norm(model.mlm_ln, MLM + "transform.LayerNorm")
        # the decoder's bias is shared with cls.predictions.bias; v5 saves only the latter
        bias = MLM + "bias"
        put(model.mlm_bias, bias if bias in state else MLM + "decoder.bias")
        if not model.tied:
            head = next((n for n in HEADS if n in state), HEADS[0])
            put(model.out_embedding.weight, head, prefixes=("",))
    n = len(model.layers)
    if any(p + f"encoder.layer.{n}.output.dense.weight" in state for p in PREFIXES):
        raise WeightsError(f"checkpoint has more layers than its config's num_hidden_layers={n}")
    check_loaded(model)
    return model


def from_hf_state(config: dict, state: dict[str, np.ndarray], dtype=None) -> Bert:
    """A Bert from a Hugging Face config.json dict and its tensors (see `from_state`); which
    heads it has (pooler, MLM) is read off the tensors' names."""
    config = BertConfig.from_hf(
        config, pooler=any(p + POOLER + ".weight" in state for p in PREFIXES),
        mlm_head=MLM + "transform.dense.weight" in state)
    return from_state(config, state, dtype)


def from_hf_dir(path: str | os.PathLike, dtype=None, tokenizer: Path | None = None):
    """`(Bert, tokenizer)` from a Hugging Face directory; parameters fp32 unless `dtype`; the
    tokenizer of the directory `tokenizer` when given, else the checkpoint's."""
    model = from_hf_state(read_config(path), read_safetensors(path), dtype)
    return model, load_tokenizer(tokenizer or path, default_class="BertTokenizer")
