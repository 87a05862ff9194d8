"""The direction AutoEncoder of Bałazy et al. (2021) and its loss.

Encoder d -> k (optionally through hidden layers with an activation), decoder Linear(k -> d).
The decoder stays linear so that the stored result is codes @ W + b, a `LowRankEmbedding`;
after training the encoder is dropped and codes = encoder(table).

Loss of a batch x `[B, d]`, reconstruction x_hat `[B, d]`, per-row weights w `[B]`:

    l_i  = w_cos * (1 - cos(x_hat_i, x_i)) + w_rec * mean_j (|x_hat_ij - x_ij| + 1e-10) ** alpha
    loss = sum_i w_i l_i / sum_i w_i

With all w_i = 1 this is the paper's w_cos * mean(1 - cos) + w_rec * mean(|.| ** alpha).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# The paper's public code: cosine weighted 0.9975 / 5, reconstruction 0.0025.
W_COS = 0.9975 / 5
W_REC = 0.0025
REC_EPS = 1e-10
COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh, "silu": jax.nn.silu}


def torch_uniform(fan_in: int):
    """PyTorch's default init of nn.Linear's weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in ** -0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                    -bound, bound)


def torch_linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    """nn.Linear with PyTorch's default init; kernel `[in, out]`, y = x @ kernel + bias."""
    init = torch_uniform(in_features)
    return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


class LinearOutIn(nnx.Module):
    """A Linear layer whose kernel is stored `[out, in]` (PyTorch's layout): y = x @ kernel.T + b.

    The encoder's layers are stored this way round for speed: the kernel's gradient is then
    dh^T @ x, a `[k, B] x [B, d]` product, where an `[in, out]` kernel's is x^T @ dh
    `[d, B] x [B, k]`, which XLA:CPU runs ~1.3x slower (25 ms against 33 ms an epoch for
    SmolLM2's table at batch 1024; `[k, d]` is also the decoder's kernel layout). The values
    are those of `torch_linear(in, out, rngs)`, transposed: same keys, same draws.
    """

    def __init__(self, in_features: int, out_features: int, rngs: nnx.Rngs):
        init = torch_uniform(in_features)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)).T)
        self.bias = nnx.Param(init(rngs.params(), (out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...].T + self.bias[...]


class DirectionAutoEncoder(nnx.Module):
    """x `[..., d]` -> codes `[..., k]` -> x_hat `[..., d]`."""

    def __init__(self, features: int, rank: int, *, hidden: Sequence[int] = (),
                 activation: str = "relu", rngs: nnx.Rngs):
        widths = [features, *hidden, rank]
        self.encoder = nnx.List([LinearOutIn(a, b, rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.decoder = torch_linear(rank, features, rngs)
        self.activation = activation

    def encode(self, x: jax.Array) -> jax.Array:
        """`[..., d]` -> `[..., k]`; the activation sits between layers, never on the codes."""
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.encoder):
            x = layer(x) if i == 0 else layer(act(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decoder(self.encode(x))


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row cosine `[..., d] x [..., d] -> [...]`, norms clamped at 1e-8 as torch does."""
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), COS_EPS)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), COS_EPS)
    return jnp.sum(a * b, axis=-1) / (na * nb)


def direction_loss(x_hat, x, alpha, row_weights=None, *, w_cos: float = W_COS,
                   w_rec: float = W_REC):
    """(loss, mean cosine) of a batch `[B, d]`; `row_weights [B]` (0 masks a row out)."""
    cos = cosine(x_hat, x)
    # a ** alpha as exp(alpha * log a): the same function, but its gradient reuses the exp,
    # where jnp.power's evaluates a second power; 40% less time per step on CPU.
    rec = jnp.mean(jnp.exp(alpha * jnp.log(jnp.abs(x_hat - x) + REC_EPS)), axis=-1)
    per_row = w_cos * (1.0 - cos) + w_rec * rec
    w = jnp.ones_like(cos) if row_weights is None else row_weights
    total = jnp.maximum(jnp.sum(w), 1e-12)
    return jnp.sum(w * per_row) / total, jnp.sum(w * cos) / total


def alpha_at(epoch: int, epochs: int, start: float = 1.0, end: float = 0.1,
             anneal_fraction: float = 2 / 3) -> float:
    """The exponent for `epoch` (0-based): linear from `start` to `end` over the first
    `anneal_fraction` of the epochs (20 of 30 by default), then held at `end`."""
    span = max(1, round(anneal_fraction * epochs))
    return start + (end - start) * min(epoch / span, 1.0)


def lr_at(epoch: int, lr: float = 1e-3, decay: float = 0.5, every: int = 4) -> float:
    """Step decay: `lr` times `decay` every `every` epochs (the paper's StepLR(4, 0.5))."""
    return lr * decay ** (epoch // every)


def init_from_svd(model: DirectionAutoEncoder, codes_weight) -> None:
    """Start a linear AE at the SVD solution: encoder V_k (stored `[k, d]`: V_k^T), decoder
    V_k^T, biases 0."""
    assert len(model.encoder) == 1, "init from SVD needs a linear encoder"
    _, vt = codes_weight
    # two copies: one buffer in two params would be donated twice by the training step
    model.encoder[0].kernel[...] = jnp.array(vt, copy=True)
    model.encoder[0].bias[...] = jnp.zeros_like(model.encoder[0].bias[...])
    model.decoder.kernel[...] = jnp.array(vt, copy=True)
    model.decoder.bias[...] = jnp.zeros_like(model.decoder.bias[...])
