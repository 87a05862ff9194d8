"""STS: mask-weighted mean pooling, cosine, Spearman vs gold, independent of padding and
batching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import spearmanr
from transformers import BertTokenizer

from dirjax.data import SentencePairs
from dirjax.errors import DataError
from dirjax.evaluate.sts import cosine, sentence_embeddings, sts_spearman

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "woman", "is", "dancing",
         "riding", "horse", "child", "the", "car", "red", "blue", "play", "##ing", "guitar"]


class ToyEncoder(nnx.Module):
    """Hidden state of token t: its embedding mixed with the mean of the real tokens."""

    def __init__(self, seed=0):
        self.emb = nnx.Param(jax.random.normal(jax.random.key(seed), (len(WORDS), 6)))

    def encode(self, ids, attention_mask=None, token_type_ids=None):
        m = jnp.ones(ids.shape) if attention_mask is None else attention_mask.astype(jnp.float32)
        e = self.emb[...][ids]
        ctx = (e * m[..., None]).sum(1, keepdims=True) / m.sum(1)[:, None, None]
        return jnp.tanh(e + 0.5 * ctx)


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def random_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["a", "man", "woman", "is", "dancing", "riding", "horse", "child", "the", "car",
             "red", "blue", "playing", "guitar"]

    def sent():
        return " ".join(rng.choice(words, size=rng.integers(2, 12)))

    return SentencePairs([sent() for _ in range(n)], [sent() for _ in range(n)],
                         list(rng.uniform(0, 5, size=n)))


def test_mean_pooling_ignores_padding(tokenizer):
    model = ToyEncoder()
    sents = random_pairs(13).sentence1
    emb, tokens = sentence_embeddings(model, tokenizer, sents, batch_size=4, progress=False)
    ids = tokenizer(sents)["input_ids"]
    assert emb.shape == (13, 6) and tokens == sum(len(x) for x in ids)
    table = np.asarray(model.emb[...])
    for i, x in enumerate(ids):          # one sentence, no padding, by hand (numpy: ToyEncoder)
        e = table[x]
        h = np.tanh(e + 0.5 * e.mean(0))
        np.testing.assert_allclose(emb[i], h.mean(0), rtol=1e-5, atol=1e-6)


def test_spearman_of_cosine_vs_gold(tokenizer):
    model = ToyEncoder(seed=1)
    pairs = random_pairs(40, seed=2)
    out = sts_spearman(model, tokenizer, pairs, batch_size=8, progress=False)
    e1, _ = sentence_embeddings(model, tokenizer, pairs.sentence1, batch_size=3, progress=False)
    e2, _ = sentence_embeddings(model, tokenizer, pairs.sentence2, batch_size=5, progress=False)
    expected = spearmanr(cosine(e1, e2), pairs.score).statistic
    assert out["pairs"] == 40
    assert out["spearman"] == pytest.approx(expected, abs=1e-6)


def test_gold_equal_to_cosine_gives_spearman_one(tokenizer):
    model = ToyEncoder(seed=3)
    pairs = random_pairs(25, seed=4)
    e1, _ = sentence_embeddings(model, tokenizer, pairs.sentence1, progress=False)
    e2, _ = sentence_embeddings(model, tokenizer, pairs.sentence2, progress=False)
    pairs.score = list(5 * cosine(e1, e2))
    assert sts_spearman(model, tokenizer, pairs, progress=False)["spearman"] == pytest.approx(1.0)


def test_cosine_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(cosine(a, b), [0.0, 1.0])


def test_one_pair_is_a_data_error(tokenizer):
    with pytest.raises(DataError):
        sts_spearman(ToyEncoder(), tokenizer, SentencePairs(["a man"], ["a car"], [1.0]),
                     progress=False)


MINILM_STSB_DEV_X100 = 86.7   # sentence-transformers / PyTorch measurement on the same 1,500 pairs


@pytest.mark.slow
def test_minilm_stsb_dev_matches_pytorch_reference():
    import os
    from pathlib import Path

    from dirjax.data import load_sts
    from dirjax.models import load_model

    data_dir = os.environ.get("DIRJAX_DATA_DIR") or str(
        Path(__file__).resolve().parents[1].parent / "shared" / "data")
    model, tokenizer = load_model("minilm-l6")
    out = sts_spearman(model, tokenizer, load_sts("stsb", "validation", data_dir),
                       batch_size=32, max_length=128)
    assert out["pairs"] == 1500
    assert 100 * out["spearman"] == pytest.approx(MINILM_STSB_DEV_X100, abs=0.1)
