"""SQuAD v1.1: official normalisation and EM/F1, n-best decoding, feature windows."""
from pathlib import Path

import numpy as np
import pytest

from dirjax.evaluate import squad

TINY_BERT = Path(__file__).parent / "fixtures" / "tiny-bert"


def test_normalize_answer():
    assert squad.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad.normalize_answer("an apple, a pear") == "apple pear"
    assert squad.normalize_answer("  Theory of\tEverything. ") == "theory of everything"
    # articles only as whole words; punctuation removed before the article test
    assert squad.normalize_answer("Anthem of the theatre") == "anthem of theatre"
    assert squad.normalize_answer("the-end") == "theend"


def test_exact_match_and_f1_known_cases():
    assert squad.exact_match_score("the Broncos", "Broncos.") == 1.0
    assert squad.exact_match_score("Denver Broncos", "Broncos") == 0.0
    # pred {denver, broncos}, gold {broncos}: P = 1/2, R = 1, F1 = 2/3
    assert squad.f1_score("Denver Broncos", "Broncos") == pytest.approx(2 / 3)
    # repeated tokens count once each in the overlap (Counter intersection)
    assert squad.f1_score("a b b c", "b c c") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert squad.f1_score("the", "a") == 0.0  # both normalise to empty


def test_evaluate_takes_max_over_gold_answers():
    ex = [squad.Example("q1", "?", "ctx", ["Denver Broncos", "Broncos"]),
          squad.Example("q2", "?", "ctx", ["1990"]),
          squad.Example("q3", "?", "ctx", ["Santa Clara, California"])]
    preds = {"q1": "the broncos", "q2": "in 1991", "q3": "Santa Clara"}
    got = squad.evaluate(ex, preds)
    # q1: EM 1, F1 1; q2: EM 0, F1 0; q3: EM 0, F1 2*(1)*(2/3)/(5/3) = 0.8
    assert got["exact_match"] == pytest.approx(100 / 3)
    assert got["f1"] == pytest.approx(100 * 1.8 / 3)


def constructed_features():
    """Two windows of one example; context tokens are positions 3.. with known offsets."""
    context = "Super Bowl 50 was played in Santa Clara California"
    words = context.split()
    starts = [context.index(w) for w in words]
    offs = [None, None, None] + [(s, s + len(w)) for s, w in zip(starts, words)] + [None]
    feats = squad.Features([[0] * len(offs)] * 2, [[0] * len(offs)] * 2, [offs, offs],
                           np.array([0, 0]), np.zeros(2, int), np.zeros(2, int))
    return context, feats


def test_decode_picks_best_valid_span():
    context, feats = constructed_features()
    ex = [squad.Example("q", "where?", context, ["Santa Clara"])]
    t = len(feats.offsets[0])
    s = np.zeros((2, t))
    e = np.zeros((2, t))
    # window 0: the best raw start is a question token (invalid), then "Santa" (word 6 -> pos 9)
    s[0, 1], s[0, 9], e[0, 10] = 50.0, 5.0, 5.0
    # an end before the start and a too-long span score higher but are not allowed
    e[0, 4] = 9.0
    s[1, 3], e[1, 11] = 6.0, 6.0          # 9 tokens long: over max_answer_length=5
    got = squad.decode(feats, s, e, ex, n_best=5, max_answer_length=5)
    assert got == {"q": "Santa Clara"}
    # with a generous length limit the long span of window 1 wins (score 12 > 10)
    got = squad.decode(feats, s, e, ex, n_best=5, max_answer_length=30)
    assert got == {"q": "Super Bowl 50 was played in Santa Clara California"}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TINY_BERT)


def test_windows_cover_context_with_stride_and_map_offsets(tokenizer):
    words = [f"w{i % 7}" for i in range(300)]
    context = " ".join(words)
    answer_at = context.index(" ".join(words[250:253]))
    ex = [squad.Example("q", "which words?", context, [" ".join(words[250:253])], answer_at)]
    max_len, stride = 64, 16
    f = squad.featurize(ex, tokenizer, max_length=max_len, stride=stride)
    assert len(f) > 1 and all(len(ids) <= max_len for ids in f.input_ids)
    spans = []   # character spans covered by each window's context tokens
    for offs in f.offsets:
        ctx = [o for o in offs if o is not None]
        spans.append([o[0] for o in ctx])
        # offsets map back to the very text of each token
        for o in ctx:
            assert context[o[0]:o[1]].strip() == context[o[0]:o[1]] and o[1] > o[0]
    covered = sorted(set(s for w in spans for s in w))
    all_tokens = [o[0] for o in tokenizer(context, return_offsets_mapping=True,
                                          add_special_tokens=False)["offset_mapping"]]
    assert covered == all_tokens                          # every context token is in a window
    for a, b in zip(spans, spans[1:]):                    # consecutive windows overlap by stride
        assert len(set(a) & set(b)) == stride
    # the answer is labelled in the windows that contain it, and maps back to its text
    inside = [i for i in range(len(f)) if f.start[i] > 0]
    assert inside
    for i in inside:
        o = f.offsets[i]
        assert context[o[f.start[i]][0]:o[f.end[i]][1]] == ex[0].answers[0]
    for i in set(range(len(f))) - set(inside):
        assert f.start[i] == f.end[i] == 0


def test_decode_of_gold_positions_recovers_answers(tokenizer):
    ctx = "The quick brown fox jumps over the lazy dog near the river bank."
    ex = [squad.Example(str(i), q, ctx, [a], ctx.index(a))
          for i, (q, a) in enumerate([("who?", "brown fox"), ("where?", "the river bank")])]
    f = squad.featurize(ex, tokenizer, max_length=64, stride=16)
    s = [np.zeros(len(ids)) for ids in f.input_ids]
    e = [np.zeros(len(ids)) for ids in f.input_ids]
    for i in range(len(f)):
        s[i][f.start[i]] = e[i][f.end[i]] = 10.0
    preds = squad.decode(f, s, e, ex)
    assert preds == {"0": "brown fox", "1": "the river bank"}
    assert squad.evaluate(ex, preds) == {"exact_match": 100.0, "f1": 100.0}
