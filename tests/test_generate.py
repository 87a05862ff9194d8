"""Generation with a KV cache (dirjax/models/generate.py) against the no-cache forward and the
no-cache `greedy` reference, on the tiny random Llama and GPT-2 checkpoints."""
from __future__ import annotations

import functools
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax import load_model, swap_embedding
from dirjax.errors import ConfigError
from dirjax.models import generate as gen
from dirjax.models.generate import generate, greedy, sample

FIXTURES = Path(__file__).parent / "fixtures"
TEXTS = ["The quick brown", "Hello world, this is a somewhat longer prompt", "A"]
N = 8  # new tokens in every test: one compile of each step serves them all


@functools.cache
def load(name: str):
    """(model, prompts, the no-cache greedy continuation of each prompt), once per session."""
    model, tokenizer = load_model(FIXTURES / name)
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    return model, prompts, [greedy(model, p, N) for p in prompts]


@pytest.fixture(params=["tiny-llama", "tiny-gpt2"])
def loaded(request):
    """Each model: for what each model's `decode` does."""
    return load(request.param)


@pytest.fixture
def llama():
    """One model: for what `generate` does on top of any model's decode (sampling, stops)."""
    return load("tiny-llama")


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids):
    return nnx.merge(graphdef, state)(ids)


@partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, ids, cache, positions, mask):
    return nnx.merge(graphdef, state).decode(ids, cache, positions, mask)


def forward(model, ids: list[int]) -> np.ndarray:
    """No-cache logits [T, V] of one unpadded sequence."""
    return np.asarray(_forward(*nnx.split(model), jnp.asarray([ids], jnp.int32)))[0]


def decode_against_forward(model, prompts, side, atol):
    """Prefill of the prompts padded on `side`, then 5 forced tokens one at a time: at every
    step each row's logits are those of the no-cache forward of that row alone."""
    steps = 5
    forced = np.random.default_rng(0).integers(1, model.config.vocab_size, (len(prompts), steps))
    B, P = len(prompts), max(map(len, prompts))
    ids, mask = np.zeros((B, P), np.int32), np.zeros((B, P), np.int32)
    for row, p in enumerate(prompts):
        at = P - len(p) if side == "left" else 0
        ids[row, at:at + len(p)], mask[row, at:at + len(p)] = p, 1
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    graphdef, state = nnx.split(model)
    cache = model.init_cache(B, P + steps)
    logits, cache = _decode(graphdef, state, ids, cache, positions, mask)
    for row, p in enumerate(prompts):
        real = np.asarray(logits[row])[mask[row] > 0]
        np.testing.assert_allclose(real, forward(model, p), atol=atol, rtol=0)
    full = [forward(model, p + f.tolist()) for p, f in zip(prompts, forced)]
    for step in range(steps):
        pos = np.array([[len(p) + step] for p in prompts], np.int32)
        logits, cache = _decode(graphdef, state, forced[:, step:step + 1].astype(np.int32), cache,
                                pos, None)
        assert int(cache.index) == P + step + 1
        for row, p in enumerate(prompts):
            np.testing.assert_allclose(np.asarray(logits[row, 0]), full[row][len(p) + step],
                                       atol=atol, rtol=0)


def test_decode_logits_equal_the_no_cache_forward(loaded):
    model, prompts, reference = loaded
    decode_against_forward(model, prompts[1:2], "left", atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_decode_logits_equal_each_row_alone(loaded, side):
    """Rows of different lengths in one batch. A batch of 3 rounds its products differently
    from a batch of 1: the no-cache forward of the padded batch is up to 2e-5 from each row
    alone too (logits up to ~5), hence 3e-5 here."""
    model, prompts, _ = loaded
    decode_against_forward(model, prompts, side, atol=3e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_equals_no_cache_greedy(loaded, side):
    model, prompts, reference = loaded
    assert generate(model, prompts, N, padding_side=side) == reference
    assert generate(model, prompts[:1], N) == reference[:1]  # batch 1 too


def test_decode_step_compiles_once(loaded):
    """One compile for the prefill of a prompt length and one for all decode steps of a
    (batch, max_len): a second call with the same shapes compiles nothing."""
    model, prompts, _ = loaded
    graphdef, state = nnx.split(model)
    step = gen.compiled_step(graphdef, jax.tree.structure(state), (0.0, None, None))
    step.clear_cache()
    generate(model, prompts, N)
    assert step._cache_size() == 2
    generate(model, [list(reversed(p)) for p in prompts], N)
    assert step._cache_size() == 2
    generate(model, prompts, N - 1)  # another max_len (the cache's shape): both compile again
    assert step._cache_size() == 4


def test_sampling_is_deterministic_per_seed(llama):
    model, prompts, reference = llama
    run = partial(generate, model, prompts, N, temperature=1.0)
    first = run(seed=1)
    assert run(seed=1) == first
    assert run(seed=2) != first
    assert first != reference  # random weights: sampling is not greedy
    assert run(seed=1, top_k=4, top_p=0.9) == run(seed=1, top_k=4, top_p=0.9)


def test_top_k_1_and_tiny_top_p_are_greedy(llama):
    model, prompts, reference = llama
    assert generate(model, prompts, N, temperature=1.0, top_k=1, seed=3) == reference
    assert generate(model, prompts, N, temperature=1.0, top_p=1e-6, seed=3) == reference


def test_sample_keeps_top_k_and_nucleus():
    logits = jnp.log(jnp.array([[0.05, 0.6, 0.05, 0.25, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 400)

    def draw(keys, **options):  # 400 draws
        return jax.jit(jax.vmap(lambda key: sample(logits, key, 1.0, **options)[0]))(keys)
    assert set(np.asarray(draw(keys)).tolist()) == {0, 1, 2, 3, 4}
    assert set(np.asarray(draw(keys, top_k=2)).tolist()) == {1, 3}
    # the smallest set reaching 0.8: 0.6 + 0.25
    assert set(np.asarray(draw(keys, top_p=0.8)).tolist()) == {1, 3}
    assert set(np.asarray(draw(keys, top_p=0.5)).tolist()) == {1}
    assert np.asarray(sample(logits, keys[0])).tolist() == [1]  # temperature 0: argmax


def test_eos_and_stop_sequences_end_a_row(llama):
    model, prompts, reference = llama
    full = reference
    eos = full[0][2]
    ended = generate(model, prompts, N, eos_id=eos)

    def cut(tokens, ids=(), stop=None):  # up to and including the first of `ids` or `stop`
        for n in range(1, len(tokens) + 1):
            if tokens[n - 1] in ids or (stop and tokens[max(n - len(stop), 0):n] == stop):
                return tokens[:n]
        return tokens

    assert ended == [cut(row, {eos}) for row in full]
    assert len(ended[0]) <= 3
    both = {full[0][1], full[1][0]}
    assert generate(model, prompts, N, eos_id=list(both)) == [cut(row, both) for row in full]
    # a stop sequence ends its row after the sequence; the other rows go on
    stop = full[1][3:5]
    out = generate(model, prompts, N, stop=[stop])
    assert out == [cut(row, stop=stop) for row in full]
    assert len(out[1]) <= 5
    assert generate(model, prompts, N, stop=[[-1, -2]]) == full  # never met
    # a row that ends at its first token
    assert generate(model, prompts[:1], N, eos_id=full[0][0]) == [full[0][:1]]


def test_compressed_embedding_generates_like_its_no_cache_path(loaded):
    """An SVD-compressed table swapped in (input and tied head) goes through decode's
    embedding lookup and `attend` as through the forward."""
    from dirjax.compress import compress

    model, prompts, reference = loaded
    small = swap_embedding(model, compress(model.embedding.table(), rate=4, method="svd"))
    expected = [greedy(small, p, N) for p in prompts]
    assert generate(small, prompts, N) == expected
    assert expected != reference  # the swap changed the model


def test_bad_arguments_are_config_errors(llama):
    model, prompts, _ = llama
    with pytest.raises(ConfigError, match="padding_side"):
        generate(model, prompts, 4, padding_side="middle")
    with pytest.raises(ConfigError, match="at least one token"):
        generate(model, [prompts[0], []], 4)
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, prompts, 4, temperature=1.0, top_p=1.5)
    bert, _ = load_model(FIXTURES / "tiny-bert")
    with pytest.raises(ConfigError, match="not a causal LM"):
        generate(bert, prompts, 4)
    assert generate(model, prompts, 0) == [[], [], []]


def test_gpt2_cache_longer_than_its_positions_is_refused():
    model, _ = load_model(FIXTURES / "tiny-gpt2")
    with pytest.raises(ConfigError, match="128 positions"):
        generate(model, [[1, 2, 3]], 126)


@pytest.mark.slow
def test_smollm2_generates_transformers_greedy_tokens():
    """SmolLM2-135M, batched with a longer prompt (left padding): the France row is
    transformers' greedy continuation token for token (golden from scripts/fixtures_llama.py)."""
    golden = np.load(FIXTURES / "golden_smollm2.npz")
    model, tokenizer = load_model("smollm2-135m")
    france = tokenizer("The capital of France is")["input_ids"]
    other = tokenizer("Once upon a time, in a small village by the sea, there lived")["input_ids"]
    want = list(golden["france_continuation"])
    out = generate(model, [france, other], len(want))
    assert out[0] == want
    assert out[1] == greedy(model, other, len(want))
