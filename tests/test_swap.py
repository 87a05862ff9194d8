"""swap_embedding on the tiny GPT-2 and BERT: input lookup and tied head.

- a module that reproduces the table exactly changes no logit (dense and low-rank);
- a different table with output="original" changes the input side only: the logits equal
  those of a checkpoint whose input embedding is the new table and whose (untied) head is
  the original one; with output="tied" they equal a checkpoint with the new table tied.
"""
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from dirjax.embedding import Embedding, LowRankEmbedding, swap_embedding
from dirjax.errors import ConfigError, WeightsError
from dirjax.models import load_model

FIXTURES = Path(__file__).parent / "fixtures"
# family -> (fixture, input-embedding key, untied head key, golden)
FAMILIES = {
    "gpt2": ("tiny-gpt2", "transformer.wte.weight", "lm_head.weight", "golden_gpt2.npz"),
    "bert": ("tiny-bert", "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.weight", "golden_bert.npz"),
}


@nnx.jit
def logits_of(model, ids, mask):
    return model(ids, mask)


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request):
    """(family, model, ids, mask, original logits)."""
    name, _, _, golden = FAMILIES[request.param]
    model, _ = load_model(FIXTURES / name)
    g = np.load(FIXTURES / golden)
    ids, mask = jnp.asarray(g["ids"]), jnp.asarray(g["mask"])
    return request.param, model, ids, mask, np.asarray(logits_of(model, ids, mask))


def other_table(model) -> np.ndarray:
    table = np.asarray(model.embedding.table())
    return table + np.random.default_rng(0).normal(0, 0.1, table.shape).astype(np.float32)


def rewritten(family: str, tmp_path: Path, new_input: np.ndarray, head: np.ndarray | None):
    """The fixture checkpoint with input embedding `new_input` and, when `head` is given,
    an untied output head `head`."""
    name, input_key, head_key, _ = FAMILIES[family]
    src = FIXTURES / name
    for f in src.iterdir():
        shutil.copy(f, tmp_path)
    state = load_file(src / "model.safetensors")
    state[input_key] = new_input
    config = json.loads((src / "config.json").read_text())
    if head is not None:
        state[head_key] = head
        config["tie_word_embeddings"] = False
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = load_model(tmp_path)
    return model


def test_identical_dense_table_changes_no_logit(case):
    _, model, ids, mask, before = case
    for output in ("tied", "original"):
        swapped = swap_embedding(model, Embedding(model.embedding.table()), output=output)
        assert swapped.embedding is not model.embedding
        np.testing.assert_array_equal(logits_of(swapped, ids, mask), before)


def test_identical_low_rank_table_changes_no_logit(case):
    """Full rank, codes = table, decoder = identity: the same table in the low-rank form."""
    _, model, ids, mask, before = case
    table = model.embedding.table()
    low_rank = LowRankEmbedding(table, jnp.eye(table.shape[1]))
    np.testing.assert_array_equal(low_rank.table(), table)
    swapped = swap_embedding(model, low_rank, output="tied")
    assert swapped.out_embedding is low_rank
    np.testing.assert_allclose(logits_of(swapped, ids, mask), before, atol=1e-5, rtol=0)


def test_other_table_original_head_changes_input_side_only(case, tmp_path):
    family, model, ids, mask, before = case
    original = np.asarray(model.embedding.table())
    new = other_table(model)
    swapped = swap_embedding(model, Embedding(new), output="original")
    assert swapped.out_embedding is not swapped.embedding
    np.testing.assert_array_equal(swapped.out_embedding.table(), original)
    got = np.asarray(logits_of(swapped, ids, mask))
    reference = rewritten(family, tmp_path, new_input=new, head=original)
    assert not reference.tied
    np.testing.assert_allclose(got, logits_of(reference, ids, mask), atol=1e-4, rtol=0)
    assert np.abs(got - before).max() > 1e-2  # the input side did change


def test_other_table_tied_changes_both_sides(case, tmp_path):
    family, model, ids, mask, before = case
    new = other_table(model)
    swapped = swap_embedding(model, Embedding(new), output="tied")
    assert swapped.out_embedding is swapped.embedding
    got = np.asarray(logits_of(swapped, ids, mask))
    reference = rewritten(family, tmp_path, new_input=new, head=None)
    np.testing.assert_allclose(got, logits_of(reference, ids, mask), atol=1e-4, rtol=0)
    original_head = np.asarray(logits_of(swap_embedding(model, Embedding(new), "original"),
                                         ids, mask))
    assert np.abs(got - original_head).max() > 1e-2  # the head did change too


def test_swap_leaves_the_original_model_alone(case):
    _, model, ids, mask, before = case
    table = model.embedding.table()
    swap_embedding(model, Embedding(jnp.zeros_like(table)), output="tied")
    assert model.embedding.table() is table and model.out_embedding is model.embedding
    np.testing.assert_array_equal(logits_of(model, ids, mask), before)


def test_bad_swaps_are_refused(case):
    _, model, *_ = case
    table = model.embedding.table()
    with pytest.raises(WeightsError):
        swap_embedding(model, Embedding(table[:-1]))
    with pytest.raises(ConfigError):
        swap_embedding(model, Embedding(table), output="both")


def test_model_without_head_ignores_output(tmp_path):
    """BertModel (no MLM head): only the input side exists; encode sees the new table."""
    src = FIXTURES / "tiny-bert"
    for f in src.iterdir():
        shutil.copy(f, tmp_path)
    state = {k.removeprefix("bert."): v for k, v in load_file(src / "model.safetensors").items()
             if not k.startswith("cls.")}
    save_file(state, tmp_path / "model.safetensors")
    model, _ = load_model(tmp_path)
    ids = jnp.asarray(np.load(FIXTURES / "golden_bert.npz")["ids"])
    new = other_table(model)
    a = swap_embedding(model, Embedding(new), output="tied")
    b = swap_embedding(model, Embedding(new), output="original")
    assert a.out_embedding is None and b.out_embedding is None
    encode = nnx.jit(lambda m, x: m.encode(x))
    np.testing.assert_array_equal(encode(a, ids), encode(b, ids))
    assert np.abs(np.asarray(encode(a, ids)) - np.asarray(encode(model, ids))).max() > 1e-2
