"""Decoding for any causal model of dirjax (`model(ids [B, T]) -> logits [B, T, V]`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def greedy(model, ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy continuation (new token ids) of one prompt `ids`.

    No KV cache: every step reruns the jitted forward on one fixed [1, L] buffer (so it compiles
    once); causal attention makes position n-1 see only the n tokens written so far. Fine for
    the few tokens of a test or a demo.
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
