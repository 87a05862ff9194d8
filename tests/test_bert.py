"""BERT: parity with transformers-PyTorch on the tiny random BertForMaskedLM and on the real
all-MiniLM-L6-v2 (goldens from scripts/fixtures_gpt2_bert.py), BertModel checkpoints, pooling."""
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from dirjax.errors import DirjaxError
from dirjax.models import load_model
from dirjax.models.bert import Bert
from dirjax.models.heads import mean_pool

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-bert"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURES / "golden_bert.npz"))


@pytest.fixture(scope="module")
def loaded():
    return load_model(TINY)


@nnx.jit
def logits_of(model, ids, mask=None, types=None):
    return model(ids, mask, types)


@nnx.jit
def encode_of(model, ids, mask=None, types=None):
    return model.encode(ids, mask, types)


def inputs(g):
    return jnp.asarray(g["ids"]), jnp.asarray(g["mask"]), jnp.asarray(g["token_type_ids"])


def test_structure(loaded):
    model, tok = loaded
    assert isinstance(model, Bert)
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (1000, 64, 2)
    assert model.tied and model.out_embedding is model.embedding
    assert model.pooler is None  # BertForMaskedLM has no pooler
    assert len(tok) == 1000 and tok.padding_side == "right"


def test_mlm_logits_and_hidden_match_transformers(loaded, golden):
    model, _ = loaded
    assert np.abs(golden["logits"]).max() > 1
    np.testing.assert_allclose(logits_of(model, *inputs(golden)), golden["logits"],
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(encode_of(model, *inputs(golden)), golden["hidden"],
                               atol=1e-4, rtol=0)


def test_tokenizer_reproduces_golden_batch(loaded, golden):
    _, tok = loaded
    enc = tok(list(golden["texts"]), list(golden["pairs"]), padding=True, return_tensors="np")
    for key, ref in (("input_ids", "ids"), ("attention_mask", "mask"),
                     ("token_type_ids", "token_type_ids")):
        np.testing.assert_array_equal(enc[key], golden[ref])


def test_padding_leaves_real_positions_alone(loaded, golden):
    """A pair alone, unpadded, gives the hidden states of its rows in the padded batch: pad
    keys are masked out of the attention of every real position."""
    model, _ = loaded
    i = 3
    n = int(golden["mask"][i].sum())
    alone = encode_of(model, jnp.asarray(golden["ids"][i:i + 1, :n]), None,
                      jnp.asarray(golden["token_type_ids"][i:i + 1, :n]))
    np.testing.assert_allclose(alone[0], golden["hidden"][i, :n], atol=1e-4, rtol=0)
    # and the mask matters: without it the pad tokens change the real positions
    unmasked = encode_of(model, jnp.asarray(golden["ids"]), None,
                         jnp.asarray(golden["token_type_ids"]))
    assert np.abs(np.asarray(unmasked)[i, :n] - golden["hidden"][i, :n]).max() > 1e-2


def bert_model_dir(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, dict]:
    """tiny-bert rewritten as a BertModel checkpoint: bare keys, no cls.*, a random pooler."""
    for f in TINY.iterdir():
        shutil.copy(f, tmp_path)
    state = {k.removeprefix("bert."): v for k, v in load_file(TINY / "model.safetensors").items()
             if not k.startswith("cls.")}
    state["pooler.dense.weight"] = rng.normal(0, 0.2, (64, 64)).astype(np.float32)
    state["pooler.dense.bias"] = rng.normal(0, 0.2, (64,)).astype(np.float32)
    save_file(state, tmp_path / "model.safetensors")
    config = json.loads((TINY / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    return tmp_path, state


def test_bert_model_checkpoint(tmp_path, golden):
    path, state = bert_model_dir(tmp_path, np.random.default_rng(0))
    model, _ = load_model(path)
    assert model.out_embedding is None and not model.tied
    with pytest.raises(DirjaxError, match="no MLM head"):
        model(jnp.asarray(golden["ids"]))
    h = encode_of(model, *inputs(golden))
    np.testing.assert_allclose(h, golden["hidden"], atol=1e-4, rtol=0)
    # HF pooler: tanh(W h[CLS] + b), W stored [out, in]
    ref = np.tanh(golden["hidden"][:, 0] @ state["pooler.dense.weight"].T
                  + state["pooler.dense.bias"])
    np.testing.assert_allclose(model.pool(h), ref, atol=1e-5, rtol=0)


def test_mean_pool_ignores_padding():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = np.asarray(mean_pool(jnp.asarray(h), jnp.asarray(mask)))
    np.testing.assert_allclose(out[0], h[0, :3].mean(0), atol=1e-6)
    np.testing.assert_allclose(out[1], h[1].mean(0), atol=1e-6)
    h[0, 3:] = 1e6  # whatever sits at pad positions
    np.testing.assert_allclose(mean_pool(jnp.asarray(h), jnp.asarray(mask))[0], out[0], atol=1e-6)


def test_minilm_sentence_embeddings_match_transformers():
    """Real weights: all-MiniLM-L6-v2 (offline package), mean-pooled, against
    transformers-PyTorch."""
    g = dict(np.load(FIXTURES / "golden_minilm.npz"))
    model, tok = load_model("minilm-l6")
    assert model.config.vocab_size == 30522 and model.config.hidden_size == 384
    assert model.out_embedding is None and model.pooler is not None
    enc = tok(list(g["texts"]), padding=True, return_tensors="np")
    np.testing.assert_array_equal(enc["input_ids"], g["ids"])
    ids, mask, types = inputs(g)
    h = encode_of(model, ids, mask, types)
    valid = g["mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(h)[valid], g["hidden"][valid], atol=1e-4, rtol=0)
    np.testing.assert_allclose(mean_pool(h, mask), g["mean_pooled"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.pool(h), g["pooler"], atol=1e-5, rtol=0)
