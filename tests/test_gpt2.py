"""GPT-2: parity with transformers-PyTorch on the tiny random checkpoint (goldens from
scripts/fixtures_gpt2_bert.py), padding, key naming, dtype."""
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from dirjax import embedding
from dirjax.errors import ConfigError
from dirjax.models import load_model
from dirjax.models.gpt2 import GPT2

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-gpt2"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURES / "golden_gpt2.npz"))


@pytest.fixture(scope="module")
def loaded():
    return load_model(TINY)


@nnx.jit
def logits_of(model, ids, mask=None):
    return model(ids, mask)


@nnx.jit
def encode_of(model, ids, mask=None):
    return model.encode(ids, mask)


def test_structure(loaded):
    model, tok = loaded
    assert isinstance(model, GPT2)
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (1000, 64, 2)
    assert isinstance(model.embedding, embedding.Embedding)
    assert model.tied and model.out_embedding is model.embedding
    assert model.embedding.table().dtype == jnp.float32
    assert len(tok) == 1000 and tok.padding_side == "right" and tok.pad_token is not None


def test_logits_match_transformers(loaded, golden):
    model, _ = loaded
    out = np.asarray(logits_of(model, jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"])))
    assert np.abs(golden["logits"]).max() > 1  # the comparison is not of near-zero numbers
    np.testing.assert_allclose(out, golden["logits"], atol=1e-4, rtol=0)


def test_tokenizer_reproduces_golden_batch(loaded, golden):
    _, tok = loaded
    enc = tok(list(golden["texts"]), padding=True, return_tensors="np")
    np.testing.assert_array_equal(enc["input_ids"], golden["ids"])
    np.testing.assert_array_equal(enc["attention_mask"], golden["mask"])
    assert tok.decode(golden["ids"][0]) == golden["texts"][0]


def test_padding_leaves_real_positions_alone(loaded, golden):
    """Each sequence alone, unpadded, gives the logits of its rows in the padded batch."""
    model, _ = loaded
    for i in (1, 3):
        n = int(golden["mask"][i].sum())
        alone = np.asarray(logits_of(model, jnp.asarray(golden["ids"][i:i + 1, :n])))
        np.testing.assert_allclose(alone[0], golden["logits"][i, :n], atol=1e-4, rtol=0)


def test_logits_are_encode_times_table(loaded, golden):
    model, _ = loaded
    ids, mask = jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"])
    h = encode_of(model, ids, mask)
    assert h.shape == (*ids.shape, 64)
    np.testing.assert_allclose(h @ model.embedding.table().T, golden["logits"], atol=1e-4, rtol=0)


def test_bare_key_names(tmp_path, golden):
    """A GPT2Model checkpoint (keys without `transformer.`, as the original gpt2 repo) loads too."""
    for f in TINY.iterdir():
        shutil.copy(f, tmp_path)
    state = load_file(TINY / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in state.items()}
    save_file(bare, tmp_path / "model.safetensors")
    config = json.loads((TINY / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2Model"]}))
    model, _ = load_model(tmp_path)
    out = logits_of(model, jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"]))
    np.testing.assert_allclose(out, golden["logits"], atol=1e-4, rtol=0)


def test_bfloat16_parameters(golden):
    model, _ = load_model(TINY, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert params and all(p.dtype == jnp.bfloat16 for p in params)
    out = np.asarray(logits_of(model, jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"])),
                     np.float32)
    mask = golden["mask"].astype(bool)
    # bf16 keeps ~3 significant digits: close to fp32, and the same top token almost everywhere
    assert np.abs(out - golden["logits"])[mask].max() < 0.15
    agree = (out.argmax(-1) == golden["logits"].argmax(-1))[mask].mean()
    assert agree > 0.9, agree


def test_too_long_sequence_is_a_clear_error(loaded):
    model, _ = loaded
    with pytest.raises(ConfigError, match="128 positions"):
        model.encode(jnp.zeros((1, 129), jnp.int32))
