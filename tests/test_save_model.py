"""A compressed model saved as one folder (dirjax.save_model) and loaded back by load_model:
identical logits for every method and output, the embedding's bytes on disk as its rate
promises (codes bit-packed at their row widths), atomic writes, damaged folders refused."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dirjax
from dirjax import load_model, save_model, swap_embedding
from dirjax.compress import codec as C
from dirjax.compress import compress, load_compressed
from dirjax.compress import quantize as Q
from dirjax.compress.store import arrays_bytes
from dirjax.errors import ConfigError, UnknownSourceError, WeightsError
from dirjax.saved import EMBEDDING_DIR, MODEL_FILE, origin

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-llama"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A class definition is executable.",
         "Hello"]


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)


def logits(model, batch) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(_run(graphdef, state, *batch))


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model(TINY)
    enc = tok(TEXTS, padding=True, return_tensors="np")
    batch = (jnp.asarray(enc["input_ids"], jnp.int32),
             jnp.asarray(enc["attention_mask"], jnp.int32))
    return model, tok, batch


def calibration(model, tok):
    """Tiny calibration arrays: token counts of a text and hidden states of a few tokens."""
    from dirjax.compress.calib import collect
    from dirjax.data import load_text
    return collect(model, tok, load_text("stdlib", "train")[:4000], n_hidden=256, max_length=128)


@pytest.fixture(scope="module")
def embeddings(tiny):
    model, tok, _ = tiny
    table = model.embedding.table()
    return {
        "svd": compress(table, rate=10, method="svd"),
        "ae": compress(table, rate=10, method="ae", epochs=2, progress=False),
        "quant": compress(table, rate=10, method="quant"),
        "quant_gptq": compress(table, rate=10, method="quant_gptq", **calibration(model, tok)),
    }


@pytest.mark.parametrize("method", ["svd", "ae", "quant", "quant_gptq"])
@pytest.mark.parametrize("output", ["tied", "original"])
def test_save_load_gives_identical_logits(tiny, embeddings, tmp_path, method, output):
    model, _, batch = tiny
    emb = embeddings[method]
    small = swap_embedding(model, emb, output)
    folder = save_model(small, tmp_path / "m", meta={"note": "test"})
    back, tok = load_model(folder)
    np.testing.assert_array_equal(logits(back, batch), logits(small, batch))
    assert (back.out_embedding is back.embedding) == (output == "tied")
    assert type(back.embedding) is type(emb) and back.embedding.method == method
    assert back.embedding.metrics == emb.metrics
    info = json.loads((folder / MODEL_FILE).read_text())
    assert (info["method"], info["output"], info["source"]) == (method, output, str(TINY.resolve()))
    assert info["meta"] == {"note": "test"} and info["metrics"] == emb.metrics
    assert abs(info["rate"] - dirjax.compression_rate(emb)) < 1e-9
    assert origin(back)["source"] == str(TINY.resolve())         # it can be saved again
    # the embedding's bytes on disk are what the rate promises (within 5%)
    on_disk = arrays_bytes(folder / EMBEDDING_DIR)
    promised = emb.storage_bytes()
    assert abs(on_disk - promised) <= 0.05 * promised, (on_disk, promised)
    table_bytes = emb.vocab_size * emb.features * 4
    assert abs(table_bytes / on_disk - info["rate"]) <= 0.05 * info["rate"]
    # the folder holds no copy of the model's weights: embedding + metadata only
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < on_disk + 8_000 and total < table_bytes / 5
    # and no temporary folder is left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_quantized_codes_are_stored_packed(embeddings):
    """The saved arrays are storage_bytes() exactly (the 8-byte rotation seed lives in the
    metadata), and unpacking gives the codes back."""
    emb = embeddings["quant"]
    arrays, static = emb.export()
    assert arrays["packed_codes"].dtype == np.uint8 and arrays["packed_codes"].ndim == 1
    assert sum(a.nbytes for a in arrays.values()) + 8 == emb.storage_bytes()
    bits = np.asarray(emb.bits[...])
    assert len(set(bits.tolist())) > 1 and "widths" in arrays      # widths vary: 4 bits each
    back = Q.QuantizedEmbedding.restore(arrays, static, method="quant")
    for name in ("codes", "bits", "scale", "offset", "mean", "rotation"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)[...]),
                                      np.asarray(getattr(emb, name)[...]))


@pytest.mark.parametrize("v,d", [(1, 8), (7, 64), (301, 30), (64, 5)])
def test_pack_rows_round_trip(v, d):
    rng = np.random.default_rng(v * d)
    bits = rng.integers(1, 9, v).astype(np.uint8)
    codes = (rng.integers(0, 256, (v, d)) % (1 << bits.astype(np.int64))[:, None]).astype(np.uint8)
    buf = Q.pack_rows(codes, bits)
    assert buf.size == int(np.sum((d * bits.astype(int) + 7) // 8))
    np.testing.assert_array_equal(Q.unpack_rows(buf, bits, d), codes)
    np.testing.assert_array_equal(C.unpack_codes(C.pack_codes(bits, 4), 4, (v,)), bits)
    uniform = np.full(v, 3, np.uint8)
    assert Q.pack_rows(codes % 8, uniform).size == v * ((3 * d + 7) // 8)
    with pytest.raises(WeightsError, match="packed codes"):
        Q.unpack_rows(buf[:-1], bits, d)


def test_a_uniform_width_stores_no_widths(tiny, tmp_path):
    model, _, batch = tiny
    emb = compress(model.embedding.table(), rate=8, method="quant", allocation="uniform")
    arrays, static = emb.export()
    width = int(np.asarray(emb.bits[...])[0])
    assert "widths" not in arrays and static["width"] == width == 3   # rate 8 - overheads
    assert arrays["packed_codes"].size == emb.vocab_size * (emb.features * width // 8)
    back = load_compressed(dirjax.compress.save_compressed(emb, tmp_path / "e"))
    np.testing.assert_array_equal(np.asarray(back.codes[...]), np.asarray(emb.codes[...]))


def test_the_first_unpacked_format_is_still_read(embeddings, tmp_path):
    """A quantised embedding saved before codes were packed (Orbax, uint8 codes [V, d])."""
    import orbax.checkpoint as ocp
    emb = embeddings["quant"]
    old = tmp_path / "old"
    arrays = {n: np.asarray(getattr(emb, n)[...])
              for n in ("codes", "bits", "scale", "offset", "mean")}
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((old / "arrays").absolute(), arrays)
        ckpt.wait_until_finished()
    (old / "meta.json").write_text(json.dumps({
        "format": "dirjax.compressed/2", "class": "QuantizedEmbedding", "method": "quant",
        "rate": emb.storage_bytes(), "vocab_size": emb.vocab_size, "features": emb.features,
        "group": emb.group, "seed": emb.seed, "rotate": True, "metrics": emb.metrics, "meta": {}}))
    back = load_compressed(old)
    np.testing.assert_array_equal(np.asarray(back.table()), np.asarray(emb.table()))


def test_other_families_and_dtypes_round_trip(embeddings, tmp_path):
    """GPT-2 (tied), an untied bf16-stored Llama, and a model loaded in bfloat16."""
    cases = [(FIXTURES / "tiny-gpt2", None), (TINY / "untied", None), (TINY, jnp.bfloat16),
             (FIXTURES / "tiny-gemma3", None)]
    for i, (source, dtype) in enumerate(cases):
        model, tok = load_model(source, dtype=dtype)
        enc = tok(TEXTS, padding=True, return_tensors="np")
        batch = (jnp.asarray(enc["input_ids"], jnp.int32),
                 jnp.asarray(enc["attention_mask"], jnp.int32))
        emb = compress(np.asarray(model.embedding.table(), np.float32), rate=6, method="quant")
        small = swap_embedding(model, emb, "original")
        back, _ = load_model(save_model(small, tmp_path / f"m{i}"))
        assert type(back) is type(model)
        np.testing.assert_array_equal(logits(back, batch), logits(small, batch))
        info = json.loads((tmp_path / f"m{i}" / MODEL_FILE).read_text())
        assert info["dtype"] == (None if dtype is None else "bfloat16")


def test_a_model_without_origin_needs_source(tiny, embeddings, tmp_path):
    model, _, batch = tiny
    from dirjax.models import llama
    from dirjax.models.weights import read_safetensors
    config = json.loads((TINY / "config.json").read_text())
    bare = llama.from_state(llama.LlamaConfig.from_hf(config),
                            read_safetensors(TINY))
    small = swap_embedding(bare, embeddings["svd"], "tied")
    with pytest.raises(ConfigError, match="pass source="):
        save_model(small, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    back, _ = load_model(save_model(small, tmp_path / "m", source=TINY))
    np.testing.assert_array_equal(logits(back, batch), logits(small, batch))
    with pytest.raises(ConfigError, match="not a compressed one"):
        save_model(model, tmp_path / "dense")


def test_writes_are_atomic_and_never_replace_a_foreign_folder(tiny, embeddings, tmp_path,
                                                                   monkeypatch):
    model, _, batch = tiny
    first = save_model(swap_embedding(model, embeddings["svd"]), tmp_path / "m")
    # a save that fails half-way leaves the previous folder whole and no temporary behind
    from dirjax.compress import store

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store, "save_compressed", broken)
    with pytest.raises(dirjax.DirjaxError, match="cannot write .*: No space left") as err:
        save_model(swap_embedding(model, embeddings["quant"]), tmp_path / "m")
    one_line(err)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert json.loads((first / MODEL_FILE).read_text())["method"] == "svd"
    # a saved model is replaced by the next save
    save_model(swap_embedding(model, embeddings["quant"]), tmp_path / "m")
    assert json.loads((first / MODEL_FILE).read_text())["method"] == "quant"
    # a folder of other files is refused, untouched
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to replace"):
        save_model(swap_embedding(model, embeddings["svd"]), other)
    assert (other / "notes.txt").read_text() == "keep me"


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_a_damaged_folder_is_a_one_line_error(tiny, embeddings, tmp_path):
    model, _, _ = tiny
    good = save_model(swap_embedding(model, embeddings["quant"]), tmp_path / "good")

    def damaged(name, harm, digests_agree=False):
        """The message for a copy of `good` harmed; `digests_agree`: the digests made to match
        the harm (a folder of format /1 has none), so the next check meets it."""
        folder = tmp_path / name
        shutil.copytree(good, folder)
        harm(folder)
        if digests_agree:
            from dirjax.saved import _files_digest
            meta = json.loads((folder / EMBEDDING_DIR / "meta.json").read_text())
            meta.pop("arrays_digest")
            (folder / EMBEDDING_DIR / "meta.json").write_text(json.dumps(meta))
            info = json.loads((folder / MODEL_FILE).read_text())
            info["embedding_digest"] = _files_digest(folder / EMBEDDING_DIR)
            (folder / MODEL_FILE).write_text(json.dumps(info))
        with pytest.raises(WeightsError) as info:
            load_model(folder)
        return one_line(info)

    assert "damaged" in damaged("json", lambda f: (f / MODEL_FILE).write_text("{not json"))
    assert "format" in damaged("format", lambda f: (f / MODEL_FILE).write_text('{"format": "x"}'))
    assert "no meta.json" in damaged("no-emb", lambda f: shutil.rmtree(f / EMBEDDING_DIR))
    arrays = "embedding/arrays/embedding.safetensors"

    def cut(f):
        (f / arrays).write_bytes((f / arrays).read_bytes()[:1000])

    def zeros(f):
        (f / arrays).write_bytes(b"\0" * 7)

    def other_widths(f):   # meta.json and the arrays disagree
        meta = json.loads((f / EMBEDDING_DIR / "meta.json").read_text())
        meta["features"] = 32
        (f / EMBEDDING_DIR / "meta.json").write_text(json.dumps(meta))
    for name, harm in (("cut", cut), ("zeros", zeros), ("mismatch", other_widths)):
        assert "embedding/ is damaged or changed" in damaged(name, harm)
    assert "cannot read" in damaged("cut2", cut, digests_agree=True)
    assert "cannot read" in damaged("zeros2", zeros, digests_agree=True)
    assert "array mean is [64], meta.json's sizes give [32]" in damaged(
        "mismatch2", other_widths, digests_agree=True)

    def other_source(f):   # the source now gives other weights
        info = json.loads((f / MODEL_FILE).read_text())
        info["source"] = str(TINY / "untied")
        (f / MODEL_FILE).write_text(json.dumps(info))
    assert "untied" in damaged("source", other_source)

    def fingerprint(f):
        info = json.loads((f / MODEL_FILE).read_text())
        info["fingerprint"] = "0" * 40
        (f / MODEL_FILE).write_text(json.dumps(info))
    assert "other weights" in damaged("fingerprint", fingerprint)

    # a folder that is not a saved model at all
    from dirjax.saved import load_saved_model
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a model saved by dirjax.save_model") as info:
        load_saved_model(tmp_path / "empty")
    one_line(info)
    with pytest.raises(UnknownSourceError, match="save_model"):
        load_model(tmp_path / "empty")
