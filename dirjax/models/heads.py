"""Task heads (NNX) on top of a backbone that exposes `encode` (and, for BERT, `pool`).

  SequenceHead: GLUE classification (`num_labels` logits) or regression (`num_labels == 1`)
                from the pooled output (BERT's pooler: tanh(W h[CLS] + b)) or, for checkpoints
                without a pooler (BertForMaskedLM, GPT-2/Llama), the [CLS] / first state;
                like Hugging Face's BertForSequenceClassification. `pooling="mean"`: the mean
                of the unpadded token states, as sentence-transformers checkpoints
                (all-MiniLM-L6-v2) were trained to be read.
  SpanHead:     SQuAD start / end logits `[B, T]` from the sequence output, like
                BertForQuestionAnswering.

Dropout is applied only in the head and only when a `dropout_key` is passed (training), so the
head stays a pure function of its parameters and inputs and the backbone needs no RNG state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dirjax.errors import ConfigError

POOLINGS = ("pooler", "cls", "mean")


def dropout(x: jax.Array, rate: float, key) -> jax.Array:
    """Inverted dropout; identity when `key` is None or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    # BERT's initializer_range 0.02 for new heads, as Hugging Face does
    return nnx.Linear(d_in, d_out, kernel_init=nnx.initializers.normal(0.02),
                      bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class SequenceHead(nnx.Module):
    """`[B, T]` ids -> `[B, num_labels]` logits (or `[B, 1]` scores for regression)."""

    def __init__(self, backbone, num_labels: int, *, pooling: str = "auto",
                 dropout_rate: float = 0.1, rngs: nnx.Rngs):
        has_pooler = getattr(backbone, "pooler", None) is not None
        if pooling == "auto":  # the pretrained pooler when the checkpoint has one (BertModel)
            pooling = "pooler" if has_pooler else "cls"
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be 'auto', 'pooler', 'cls' or 'mean', got {pooling!r}")
        if pooling == "pooler" and not has_pooler:
            raise ConfigError(f"this {type(backbone).__name__} has no pooler; "
                              "use pooling='cls' or 'mean'")
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        self.dropout_rate = dropout_rate
        self.classifier = _linear(backbone.config.hidden_size, num_labels, rngs)

    def __call__(self, ids, attention_mask=None, token_type_ids=None, *, dropout_key=None):
        h = self.backbone.encode(ids, attention_mask, token_type_ids)      # [B, T, d]
        if self.pooling == "pooler":
            pooled = self.backbone.pool(h)
        elif self.pooling == "mean":
            pooled = mean_pool(h, attention_mask)
        else:
            pooled = h[:, 0]
        return self.classifier(dropout(pooled, self.dropout_rate, dropout_key))


def mean_pool(h: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    """`[B, T, d]` -> `[B, d]`: the mean over positions where `attention_mask` is 1."""
    if attention_mask is None:
        return jnp.mean(h, axis=1)
    m = attention_mask[..., None].astype(h.dtype)
    return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class SpanHead(nnx.Module):
    """`[B, T]` ids -> (start `[B, T]`, end `[B, T]`) logits of the answer span."""

    def __init__(self, backbone, *, rngs: nnx.Rngs):
        self.backbone = backbone
        self.qa_outputs = _linear(backbone.config.hidden_size, 2, rngs)

    def __call__(self, ids, attention_mask=None, token_type_ids=None, *, dropout_key=None):
        h = self.backbone.encode(ids, attention_mask, token_type_ids)      # [B, T, d]
        logits = self.qa_outputs(h)                                        # [B, T, 2]
        return logits[..., 0], logits[..., 1]
