"""Generation with a KV cache (dirjax/models/generate.py) against the no-cache forward and the
no-cache `greedy` reference, on the tiny random Llama and GPT-2 checkpoints."""
from __future__ import annotations

import copy
import functools
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dirjax
from dirjax import load_model, swap_embedding
from dirjax.errors import ConfigError
from dirjax.models import generate as gen
from dirjax.models.generate import generate, greedy, sample

FIXTURES = Path(__file__).parent / "fixtures"
TEXTS = ["The quick brown", "Hello world, this is a somewhat longer prompt", "A"]
N = 8  # new tokens in every test: one compile of each step serves them all


@functools.cache
def pair(name: str):
    """(model, tokenizer) of a tiny checkpoint, once per session."""
    return load_model(FIXTURES / name)


@functools.cache
def load(name: str):
    """(model, prompts, the no-cache greedy continuation of each prompt), once per session."""
    model, tokenizer = pair(name)
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


def test_generation_compiles_once(loaded):
    """The whole generation is one compiled call per (batch, prompt length, max_new_tokens):
    a second call with the same shapes compiles nothing."""
    model, prompts, _ = loaded
    graphdef, state = nnx.split(model)
    run = gen.compiled_generate(graphdef, jax.tree.structure(state), (0.0, None, None), N, None)
    run.clear_cache()
    generate(model, prompts, N)
    assert run._cache_size() == 1
    generate(model, [list(reversed(p)) for p in prompts], N)
    assert run._cache_size() == 1
    generate(model, [p[:1] for p in prompts], N)  # another prompt length: one more compile
    assert run._cache_size() == 2


def stepwise(model, prompts, n, *, eos=(), stops=(), side="left", sampling=(0.0, None, None),
             seed=0):
    """The step-by-step loop `generate` ran before its one-call loop: the prefill's full logits
    [B, P, V], then one jitted decode call per token on the host, EOS and stop sequences
    judged in Python after each token."""
    B, P = len(prompts), max(map(len, prompts))
    ids, mask = np.zeros((B, P), np.int32), np.zeros((B, P), np.int32)
    for row, p in enumerate(prompts):
        at = P - len(p) if side == "left" else 0
        ids[row, at:at + len(p)], mask[row, at:at + len(p)] = p, 1
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    lengths = np.array([len(p) for p in prompts])
    last = np.full(B, P - 1) if side == "left" else lengths - 1
    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)
    logits, cache = _decode(graphdef, state, ids, model.init_cache(B, P + n), positions, mask)
    logits = np.asarray(logits)[np.arange(B), last]
    out, ended = [[] for _ in prompts], [False] * B
    for i in range(n):
        token = np.asarray(sample(jnp.asarray(logits), jax.random.fold_in(key, i), *sampling))
        for row, tok in enumerate(token.tolist()):
            if not ended[row]:
                out[row].append(tok)
                ended[row] = tok in eos or any(out[row][-len(s):] == s for s in stops)
        if all(ended) or i == n - 1:
            return out
        logits, cache = _decode(graphdef, state, token[:, None], cache,
                                (lengths + i)[:, None], None)
        logits = np.asarray(logits)[:, 0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_one_call_loop_gives_the_step_by_step_tokens(loaded, side):
    """Ragged prompts padded on either side; EOS ids, stop sequences (one longer than the
    tokens at first, one that never comes) end rows on the device as the host loop ends
    them; sampled tokens are the same draws."""
    model, prompts, reference = loaded
    run = partial(generate, model, prompts, N, padding_side=side)
    assert run(eos_id=None) == stepwise(model, prompts, N, side=side) == reference
    eos = {reference[0][2], reference[2][0]}
    stops = [reference[1][2:5], [-3, 2**40], reference[0][:1] + [reference[0][1]]]
    want = stepwise(model, prompts, N, eos=eos, stops=stops, side=side)
    assert want != reference and run(eos_id=list(eos), stop=stops) == want
    sampling = (1.0, 8, 0.9)
    drawn = stepwise(model, prompts, N, side=side, sampling=sampling, seed=5)
    assert drawn != reference
    assert run(eos_id=None, temperature=1.0, top_k=8, top_p=0.9, seed=5) == drawn


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


def cut(tokens, ids=(), stop=None):
    """`tokens` up to and including the first of `ids` or the end of `stop`."""
    for n in range(1, len(tokens) + 1):
        if tokens[n - 1] in ids or (stop and tokens[max(n - len(stop), 0):n] == stop):
            return tokens[:n]
    return tokens


def test_eos_and_stop_sequences_end_a_row(llama):
    model, prompts, reference = llama
    full = reference
    eos = full[0][2]
    ended = generate(model, prompts, N, eos_id=eos)

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


# ----------------------------------------------------------------------------- every input form
# dirjax.generate takes what a Hugging Face user has at hand; each form gives the tokens of the
# list-of-lists path (`reference`, the no-cache greedy), in the form of the input.

def test_dirjax_generate_is_the_models_generate():
    assert dirjax.generate is generate


def test_every_id_form_gives_the_list_of_lists_tokens(llama):
    model, prompts, reference = llama
    flat = prompts[1]
    for one in (flat, tuple(flat), np.array(flat), np.array(flat, np.int16),
                jnp.asarray(flat, jnp.int32), list(np.array(flat))):
        assert generate(model, one, N) == reference[1], type(one)
    assert generate(model, [np.array(p) for p in prompts], N) == reference  # ragged rows
    square = [p[:4] for p in prompts[:2]]
    expected = generate(model, square, N)
    assert generate(model, np.array(square), N) == expected
    assert generate(model, jnp.asarray(square), N) == expected
    assert generate(model, flat, np.int64(N), top_k=0) == reference[1]  # numpy ints; 0: no top-k
    assert generate(model, flat, 0) == []


def test_return_prompt_puts_the_prompt_first(llama):
    model, prompts, reference = llama
    assert generate(model, prompts, N, return_prompt=True) == [
        p + r for p, r in zip(prompts, reference)]
    assert generate(model, prompts[0], N, return_prompt=True) == prompts[0] + reference[0]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("tensors", [None, "np"])
def test_tokenizer_output_padded_on_either_side(llama, side, tensors):
    """A padded batch as the tokenizer gives it (lists or numpy): the padding (attention_mask
    0) is dropped, so the tokens are those of the unpadded prompts."""
    model, prompts, reference = llama
    tokenizer = copy.deepcopy(pair("tiny-llama")[1])
    tokenizer.padding_side = side
    batch = tokenizer(TEXTS, padding=True, return_tensors=tensors)
    short = np.asarray(batch["attention_mask"][2])
    assert short[0 if side == "left" else -1] == 0  # padded where asked
    assert generate(model, batch, N) == reference
    assert generate(model, dict(batch), N, return_prompt=True) == [
        p + r for p, r in zip(prompts, reference)]
    assert generate(model, tokenizer(TEXTS[1]), N) == reference[1]  # one prompt: flat ids
    no_mask = {"input_ids": np.asarray(batch["input_ids"])[1:2]}   # row 1: the longest
    assert generate(model, no_mask, N) == reference[1:2]


def test_text_in_text_out_is_the_decoded_ids_path():
    """GPT-2's byte-level tokenizer decodes its encoding back exactly, so the prompt text and
    the continuation text are together the decoding of prompt + new ids."""
    model, tokenizer = pair("tiny-gpt2")
    _, prompts, reference = load("tiny-gpt2")
    out = dirjax.generate(model, TEXTS[1], N, tokenizer=tokenizer)
    assert isinstance(out, str) and out
    assert TEXTS[1] + out == tokenizer.decode(prompts[1] + reference[1])
    many = dirjax.generate(model, TEXTS, N, tokenizer=tokenizer)
    assert [t + o for t, o in zip(TEXTS, many)] == [
        tokenizer.decode(p + r) for p, r in zip(prompts, reference)]
    assert dirjax.generate(model, TEXTS[1], N, tokenizer=tokenizer,
                           return_prompt=True) == TEXTS[1] + out


def test_stop_strings_are_encoded_by_the_tokenizer(llama):
    model, prompts, reference = llama
    tokenizer = pair("tiny-llama")[1]
    stop = reference[1][1:3]
    text = tokenizer.decode(stop)
    assert tokenizer.encode(text, add_special_tokens=False) == stop
    out = generate(model, prompts, N, tokenizer=tokenizer, stop=text)
    assert out == [cut(row, stop=stop) for row in reference]
    assert len(out[1]) == 3


def test_eos_comes_from_the_tokenizer_and_the_generation_config(llama):
    model, prompts, reference = llama
    tokenizer = copy.deepcopy(pair("tiny-llama")[1])
    eos = reference[0][2]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    # the loader recorded the fixture's generation_config.json (eos_token_id 0)
    assert json.loads(model.generation_config)["eos_token_id"] == 0
    assert gen.eos_ids_of(model, tokenizer) == sorted({0, eos}) and gen.eos_ids_of(model) == [0]
    out = generate(model, prompts, N, tokenizer=tokenizer)
    assert out == [cut(row, {0, eos}) for row in reference] and len(out[0]) == 3
    assert generate(model, prompts, N, tokenizer=tokenizer, eos_id=None) == reference  # off
    other = reference[2][1]
    assert generate(model, prompts, N, tokenizer=tokenizer, eos_id=[other]) == [
        cut(row, {other}) for row in reference]                               # an override
    # the model's generation config (JSON text, as the loader records it) joins the tokenizer's
    with_config = nnx.merge(*nnx.split(model))
    with_config.generation_config = json.dumps({"eos_token_id": [other, 7]})
    assert gen.eos_ids_of(with_config, tokenizer) == sorted({eos, other, 7})  # replaced
    assert gen.eos_ids_of(with_config) == sorted({other, 7})
    assert generate(with_config, prompts, N, tokenizer=tokenizer) == [
        cut(row, {eos, other, 7}) for row in reference]
    assert gen.eos_ids_of(SimpleNamespace(generation_config={"eos_token_id": 5})) == [5]


# ----------------------------------------------------------------------------- refusals
# Each is one ConfigError line, raised before anything compiles or runs (decode_new fails the
# test if reached).

BAD_INPUTS = {
    "id V": ([[1, 1000]], r"token id 1000, outside the model's vocabulary \[0, 1000\)"),
    "id 1e6": ([[10**6]], "token id 1000000"),
    "id -1": ([[5, -1]], "token id -1"),
    "float id 5.7": ([5.7], "5.7 .float.: token ids are ints"),
    "float id 5.0": ([[1, 5.0]], "5.0 .float."),
    "bool ids": ([True, False], "True .bool."),
    "float array": (np.array([[5.0]]), "float64 array: token ids must be integers"),
    "bool array": (np.array([True]), "bool array"),
    "3-D array": (np.zeros((1, 2, 3), np.int32), "3-D int32 array of shape"),
    "None": (None, "got None; give a string"),
    "int": (5, "got int 5"),
    "string without tokenizer": ("Hello", "pass tokenizer="),
    "strings without tokenizer": (["Hello", "you"], "pass tokenizer="),
    "dict without input_ids": ({"ids": [[1]]}, "without 'input_ids'"),
    "mask of another shape": ({"input_ids": [[1, 2]], "attention_mask": [[1]]},
                              "attention_mask row 0"),
    "mask not 0/1": ({"input_ids": [[1, 2]], "attention_mask": [[2, 1]]}, "zeros and ones"),
    "all padding": ({"input_ids": [[1, 2]], "attention_mask": [[0, 0]]}, "prompt 0 is empty"),
    "no prompt": ([], r"got list \[\]"),
    "empty prompt": ([[1], []], "prompt 1 is empty"),
    "ids and lists mixed": ([[1], 2], "got list"),
}

BAD_OPTIONS = {
    "temperature NaN": (dict(temperature=float("nan")), "temperature must be"),
    "temperature inf": (dict(temperature=float("inf")), "temperature must be"),
    "temperature < 0": (dict(temperature=-0.5), "temperature must be"),
    "top_p 0": (dict(temperature=1.0, top_p=0), "0 < top_p <= 1, got 0"),
    "top_p NaN": (dict(temperature=1.0, top_p=float("nan")), "top_p"),
    "top_k 2.5": (dict(temperature=1.0, top_k=2.5), "top_k must be"),
    "top_k -1": (dict(temperature=1.0, top_k=-1), "top_k must be"),
    "max_new_tokens 2.5": (dict(max_new_tokens=2.5), "max_new_tokens must be an int"),
    "max_new_tokens 1e12": (dict(max_new_tokens=1e12), "max_new_tokens must be an int"),
    "max_new_tokens True": (dict(max_new_tokens=True), "max_new_tokens must be an int"),
    "max_new_tokens -1": (dict(max_new_tokens=-1), "max_new_tokens must be an int"),
    # 10**12 positions of KV cache: no machine holds it (Llama has no position limit)
    "max_new_tokens 10**12": (dict(max_new_tokens=10**12), "GiB KV cache"),
    "seed 1.5": (dict(seed=1.5), "seed must be"),
    "eos_id V": (dict(eos_id=1000), "eos_id must be"),
    "eos_id 2.5": (dict(eos_id=[2.5]), "eos_id must be"),
    "flat stop": (dict(stop=[1, 2]), "stop must be a list of id lists or strings"),
    "stop string without tokenizer": (dict(stop=["\n"]), "needs tokenizer="),
    "padding_side": (dict(padding_side="middle"), "padding_side"),
    "cache_dtype int8": (dict(cache_dtype="int8"), "cache_dtype"),
    "return_prompt 'yes'": (dict(return_prompt="yes"), "return_prompt"),
}


@pytest.fixture
def no_compute(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("generate started decoding before judging its arguments")
    monkeypatch.setattr(gen, "decode_new", reached)


@pytest.mark.parametrize("inputs, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_are_one_line(llama, no_compute, inputs, message):
    with pytest.raises(ConfigError, match=message) as error:
        generate(llama[0], inputs, 4)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("options, message", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_one_line(llama, no_compute, options, message):
    model, prompts, _ = llama
    with pytest.raises(ConfigError, match=message) as error:
        generate(model, prompts, **{"max_new_tokens": 4, **options})
    assert "\n" not in str(error.value)
