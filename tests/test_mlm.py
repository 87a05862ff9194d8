"""Masked-LM perplexity: whole-word masking, deterministic per seed, and exp(mean NLL) by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import BertTokenizer

from dirjax.errors import DataError
from dirjax.evaluate.perplexity import choose_masked_words, mask_lines, mlm_perplexity, word_spans

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "un",
         "##believ", "##able", "##s", "play", "##ing", ".", "dog", "ran", "far", "##ther", "a",
         "big", "##ger", "red", "house", "in", "town", "and"]


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def sentences(n, seed=0):
    """Random lines of 8-30 words, many with ## continuations."""
    rng = np.random.default_rng(seed)
    vocab = ["the", "cats", "sat", "on", "unbelievable", "mat", "playing", "dog", "ran",
             "farther", "a", "bigger", "red", "house", "in", "town", "and", "."]
    return [" ".join(rng.choice(vocab, size=rng.integers(8, 31))) for _ in range(n)]


class BiMean(nnx.Module):
    """Logits from a token's embedding plus the mean over the real (mask 1) tokens."""

    def __init__(self, seed=0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.emb = nnx.Param(jax.random.normal(k1, (len(WORDS), 8)))
        self.out = nnx.Param(jax.random.normal(k2, (8, len(WORDS))))

    def __call__(self, ids, attention_mask=None, token_type_ids=None):
        m = jnp.ones(ids.shape) if attention_mask is None else attention_mask.astype(jnp.float32)
        e = self.emb[...][ids]
        ctx = (e * m[..., None]).sum(1, keepdims=True) / m.sum(1)[:, None, None]
        return 2.0 * (e + ctx) @ self.out[...]


def test_word_spans_group_wordpiece_continuations(tokenizer):
    enc = tokenizer("the cats sat on unbelievable mat", return_special_tokens_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    spans = word_spans(tokens, enc["special_tokens_mask"])
    assert [[tokens[i] for i in s] for s in spans] == [
        ["the"], ["cat", "##s"], ["sat"], ["on"], ["un", "##believ", "##able"], ["mat"]]


def test_masking_is_deterministic_per_seed_and_masks_whole_words(tokenizer):
    lines = sentences(40)
    a = mask_lines(tokenizer, lines, min_tokens=20, seed=3)
    b = mask_lines(tokenizer, lines, min_tokens=20, seed=3)
    c = mask_lines(tokenizer, lines, min_tokens=20, seed=4)
    assert len(a) == len(b) == len(c) > 5
    assert all((x.input_ids == y.input_ids).all() and (x.labels == y.labels).all()
               for x, y in zip(a, b))
    assert any((x.labels != y.labels).any() for x, y in zip(a, c))
    mask_id = tokenizer.mask_token_id
    for ex in a:
        original = np.where(ex.labels >= 0, ex.labels, ex.input_ids)
        tokens = tokenizer.convert_ids_to_tokens(original.tolist())
        special = [t in ("[CLS]", "[SEP]") for t in tokens]
        masked = ex.labels >= 0
        assert (ex.input_ids[masked] == mask_id).all() and not masked[np.array(special)].any()
        n_real = len(tokens) - sum(special)
        assert n_real >= 20
        assert 1 <= masked.sum() <= max(1, round(0.15 * n_real))
        for span in word_spans(tokens, special):                 # a word is all or nothing
            assert masked[span].all() or not masked[span].any()


def test_short_lines_are_dropped(tokenizer):
    lines = ["the cat sat", "the cats sat on the mat " * 4]
    examples = mask_lines(tokenizer, lines, min_tokens=20)
    assert len(examples) == 1 and len(examples[0].input_ids) == 2 + 4 * 7


def test_choose_masked_words_fills_budget_with_whole_words():
    words = [[1], [2, 3, 4], [5], [6, 7], [8], [9], [10], [11], [12], [13]]  # 13 tokens
    chosen = choose_masked_words(words, 0.5, np.random.default_rng(0))   # budget round(6.5) = 6
    assert len(chosen) == 6
    assert all(set(w) <= set(chosen) or not set(w) & set(chosen) for w in words)


def test_mlm_perplexity_is_exp_of_mean_masked_nll(tokenizer):
    model = BiMean()
    examples = mask_lines(tokenizer, sentences(30, seed=1), min_tokens=20, seed=0)
    out = mlm_perplexity(model, examples, batch_size=4, progress=False)
    nlls = []
    table, out_w = np.asarray(model.emb[...], np.float64), np.asarray(model.out[...], np.float64)
    for ex in examples:                    # one unpadded example at a time (numpy: BiMean)
        e = table[ex.input_ids]
        logits = 2.0 * (e + e.mean(0)) @ out_w
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        pos = np.flatnonzero(ex.labels >= 0)
        nlls.extend(-logp[pos, ex.labels[pos]])
    assert out["tokens"] == len(nlls)
    assert out["nll"] == pytest.approx(np.mean(nlls), rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(np.mean(nlls)), rel=1e-5)


def test_no_long_line_is_a_data_error(tokenizer):
    with pytest.raises(DataError):
        mlm_perplexity(BiMean(), mask_lines(tokenizer, ["the cat"], min_tokens=20),
                       progress=False)
