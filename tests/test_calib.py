"""Calibration data collection (dirjax.compress.calib) with a stand-in tokenizer and model."""
import types

import jax.numpy as jnp
import numpy as np
import pytest

from dirjax.compress import calib
from dirjax.errors import DataError

V, D = 50, 8


def tokenizer(text, add_special_tokens=False, verbose=False):
    """Words -> ids by length and first letter: deterministic, no special tokens."""
    def ids(line):
        return [(len(w) * 7 + ord(w[0])) % V for w in line.split()]
    return {"input_ids": [ids(t) for t in text] if isinstance(text, list) else ids(text)}


class Model:
    config = types.SimpleNamespace(vocab_size=V, hidden_size=D)
    out_embedding = object()

    def __init__(self):
        self.calls = []

    def encode(self, ids, attention_mask=None):
        self.calls.append(ids.shape)
        return jnp.repeat(ids[..., None].astype(jnp.float32), D, axis=-1)   # h = id everywhere


def test_counts_and_hidden_follow_the_text():
    text = "the cat sat\n\non the mat the end\n" * 10
    model = Model()
    out = calib.collect(model, tokenizer, text, n_hidden=25, max_length=10)
    stream = np.asarray(tokenizer(text)["input_ids"])
    np.testing.assert_array_equal(out["counts"], np.bincount(stream, minlength=V))
    assert out["hidden"].shape == (25, D)
    np.testing.assert_array_equal(out["hidden"][:, 0], stream[:25])   # in stream order
    assert model.calls == [(1, 10), (1, 10), (1, 5)]                   # windows of max_length


def test_no_hidden_without_lm_head_and_empty_text_fails():
    model = Model()
    model.out_embedding = None
    assert set(calib.collect(model, tokenizer, "a b c")) == {"counts"}
    assert set(calib.collect(Model(), tokenizer, "a b c", n_hidden=0)) == {"counts"}
    with pytest.raises(DataError):
        calib.token_counts(tokenizer, "\n \n", V)


def test_hidden_states_after_a_bos_drop_its_state_and_keep_the_stream_order():
    text = "the cat sat\n\non the mat the end\n" * 10
    model = Model()
    out = calib.collect(model, tokenizer, text, n_hidden=25, max_length=10, bos_id=V - 1)
    stream = np.asarray(tokenizer(text)["input_ids"])
    assert out["hidden"].shape == (25, D)
    np.testing.assert_array_equal(out["hidden"][:, 0], stream[:25])   # no BOS state among them
    assert model.calls == [(1, 10), (1, 10), (1, 8)]       # BOS + 9 tokens a window: 9, 9, 7
