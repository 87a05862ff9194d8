"""A saved model is never silently another model (issue 24) and saves travel (issue 23).

Every read of a saved folder is checked by content, whatever dtype is asked for: the source's
weights (fingerprint), its tokenizer (fingerprint), the embedding's files (digests), the sizes
meta.json claims (before anything is allocated by them). A user's mistake or a failed write is
one line; writes are atomic under concurrent writers and through symbolic links, with the
modes the umask gives. A portable save loads with no source; a reference save follows a moved
source (`source=`); a run's saved compression loads onto its model (`embedding=`)."""
from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from dirjax import export_hf, load_model, save_model, swap_embedding
from dirjax.compress import compress, load_compressed, save_compressed, store
from dirjax.errors import ConfigError, DirjaxError, UnknownSourceError, WeightsError
from dirjax.models.weights import read_safetensors
from dirjax.saved import EMBEDDING_DIR, MODEL_FILE, fingerprint, origin

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny-llama"
ARRAYS = f"{EMBEDDING_DIR}/arrays/embedding.safetensors"
WEIGHTS_DIR = "weights"       # a portable save's other weights
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A class definition is executable."]


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)


def logits(model, tok) -> np.ndarray:
    enc = tok(TEXTS, padding=True, return_tensors="np")
    graphdef, state = nnx.split(model)
    return np.asarray(_run(graphdef, state, jnp.asarray(enc["input_ids"], jnp.int32),
                           jnp.asarray(enc["attention_mask"], jnp.int32)))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def copy_tiny(tmp_path, name="src") -> Path:
    dst = tmp_path / name
    shutil.copytree(TINY, dst, ignore=shutil.ignore_patterns("untied"))
    return dst


def scale_down_proj(source: Path, factor=1.5) -> None:
    """One layer's MLP output weight multiplied: same shapes, another model."""
    weights = read_safetensors(source)       # float32 (the fixture stores some in bf16)
    name = next(k for k in weights if "layers.0.mlp.down_proj" in k)
    weights[name] = weights[name] * factor
    save_file(weights, str(source / "model.safetensors"))


@pytest.fixture(scope="module")
def quant():
    model, _ = load_model(TINY)
    return compress(model.embedding.table(), rate=8, method="quant")


def rewrite(folder: Path, name: str, **fields) -> None:
    """Change fields of a json file in a saved folder (a hand edit, or an attacker's)."""
    info = json.loads((folder / name).read_text())
    info.update(fields)
    (folder / name).write_text(json.dumps(info))


def redigest(folder: Path) -> None:
    """Make the digests agree with changed files again: what the next layer of checks meets."""
    emb = folder / EMBEDDING_DIR
    meta = json.loads((emb / "meta.json").read_text())
    if "arrays_digest" in meta:
        meta["arrays_digest"] = store.file_digest(folder / ARRAYS)
        (emb / "meta.json").write_text(json.dumps(meta))
    if "embedding_digest" in json.loads((folder / MODEL_FILE).read_text()):
        from dirjax.saved import _files_digest
        rewrite(folder, MODEL_FILE, embedding_digest=_files_digest(emb))


# ---------------------------------------------------------------- 1. checked whatever the dtype

def test_loading_in_float32_casts_exactly_to_every_dtype():
    """What the dtype-independent check rests on: a float32 load cast to a dtype is the load
    in that dtype, for every family."""
    from dirjax.saved import _cast
    for name in ("tiny-llama", "tiny-gpt2", "tiny-gemma3", "tiny-bert"):
        fp32, _ = load_model(FIXTURES / name)
        for dtype in ("bfloat16", "float16"):
            direct, _ = load_model(FIXTURES / name, dtype=dtype)
            assert fingerprint(_cast(fp32, dtype)) == fingerprint(direct), (name, dtype)
        assert fingerprint(_cast(fp32, "bfloat16")) != fingerprint(fp32)


def test_a_changed_source_is_refused_whatever_the_dtype(tmp_path, quant):
    src = copy_tiny(tmp_path)
    model, tok = load_model(src)
    small = swap_embedding(model, quant)
    saved = save_model(small, tmp_path / "m")
    bf16 = save_model(swap_embedding(load_model(src, dtype=jnp.bfloat16)[0], quant),
                      tmp_path / "m16")
    assert json.loads((saved / MODEL_FILE).read_text())["dtype"] is None
    # before the change: every dtype loads, as a direct load in that dtype would give it
    want = logits(swap_embedding(load_model(src, dtype=jnp.bfloat16)[0], quant), tok)
    got, _ = load_model(saved, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(logits(got, tok), want)
    assert origin(got)["dtype"] == "bfloat16" and got.blocks[0].mlp.down_proj.kernel.dtype == \
        jnp.bfloat16
    got, _ = load_model(bf16, dtype=jnp.float32)   # saved in bf16, asked for fp32
    np.testing.assert_array_equal(logits(got, tok), logits(small, tok))
    assert origin(got)["dtype"] in (None, "float32")

    scale_down_proj(src)
    for folder in (saved, bf16):
        for dtype in (None, jnp.float32, "float32", jnp.bfloat16, jnp.float16):
            with pytest.raises(WeightsError, match="now gives other weights") as err:
                load_model(folder, dtype=dtype)
            one_line(err)


def test_the_command_line_checks_a_saved_folder_it_is_given(tmp_path, run_here, quant):
    """run.py always passes a dtype (config.dtype float32): the check must still run."""
    src = copy_tiny(tmp_path)
    saved = save_model(swap_embedding(load_model(src)[0], quant), tmp_path / "m")
    scale_down_proj(src)
    proc = run_here(f"--config.model={saved}", "--config.max_tokens=128",
                    "--config.max_length=64", "--config.rates=(4.0,)",
                    "--config.methods=('svd',)", "--config.progress=False",
                    "--workdir", str(tmp_path / "w"), cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "now gives other weights" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "w" / "results.json").exists()


# ---------------------------------------------------------------- 2. the tokenizer

def test_another_tokenizer_is_refused_unless_asked_for(tmp_path, quant):
    from dirjax.compress.cache import tokenizer_fingerprint
    model, tok = load_model(TINY)
    saved = save_model(swap_embedding(model, quant), tmp_path / "m")
    other = str(FIXTURES / "tiny-gpt2")
    rewrite(saved, MODEL_FILE, tokenizer=other)     # the metadata names another tokenizer
    with pytest.raises(WeightsError, match="tiny-gpt2 is not the one it was saved with") as err:
        load_model(saved)
    one_line(err)
    info = json.loads((saved / MODEL_FILE).read_text())
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)
    # the caller's own choice is allowed, and said
    with pytest.warns(UserWarning, match="using tokenizer .*tiny-gpt2.*not the one"):
        _, tok2 = load_model(saved, tokenizer=other)
    assert tokenizer_fingerprint(tok2) != info["tokenizer_fingerprint"]
    # the same tokenizer named explicitly: no warning
    rewrite(saved, MODEL_FILE, tokenizer=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(saved, tokenizer=str(TINY))


# ---------------------------------------------------------------- 3. atomic writes

WRITER = """
import json, sys, time
from pathlib import Path
import dirjax
from dirjax.compress import load_compressed
from dirjax.errors import DirjaxError
from dirjax.saved import read_info
model, _ = dirjax.load_model(sys.argv[1])
small = dirjax.swap_embedding(model, load_compressed(sys.argv[2]))
print("ready", flush=True)
go = Path(sys.argv[3] + ".go")
while not go.exists():          # both writers start their saves together
    time.sleep(0.01)
bad, start = [], time.time()
for i in range(30):
    try:
        dirjax.save_model(small, sys.argv[3], meta={"writer": sys.argv[4], "i": i})
        read_info(sys.argv[3])      # the name holds a whole saved folder at every moment
    except Exception as e:
        bad.append(f"{type(e).__name__}: {e}")
print(json.dumps({"bad": bad, "start": start, "end": time.time()}))
"""


def test_two_processes_saving_to_one_folder(tmp_path, quant):
    emb = save_compressed(quant, tmp_path / "emb")
    target = tmp_path / "m"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(TINY), str(emb), str(target),
                               w], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for w in "ab"]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.communicate()[1]
    Path(f"{target}.go").touch()
    outs = [p.communicate(timeout=600) for p in procs]
    done = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        done.append(json.loads(out.splitlines()[-1]))
        assert done[-1]["bad"] == []          # no ENOTEMPTY, no false "is not a saved model"
    (a, b) = done
    assert a["start"] < b["end"] and b["start"] < a["end"]     # the writers did overlap
    Path(f"{target}.go").unlink()
    assert [p.name for p in tmp_path.iterdir() if p.name != "emb"] == ["m"]
    info = json.loads((target / MODEL_FILE).read_text())
    assert info["meta"]["i"] == 29 and info["meta"]["writer"] in "ab"
    back, tok = load_model(target)
    model, _ = load_model(TINY)
    np.testing.assert_array_equal(logits(back, tok), logits(swap_embedding(model, quant), tok))


def test_saving_onto_a_symbolic_link_replaces_what_it_points_to(tmp_path, quant):
    model, tok = load_model(TINY)
    real = save_model(swap_embedding(model, quant), tmp_path / "real", meta={"n": 1})
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "m"
    link.symlink_to(real)
    got = save_model(swap_embedding(model, quant, "original"), link, meta={"n": 2})
    assert got == link.absolute() and link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / MODEL_FILE).read_text())["meta"] == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["links", "real"]
    assert [p.name for p in (tmp_path / "links").iterdir()] == ["m"]
    back, _ = load_model(link)
    assert back.out_embedding is not back.embedding


def modes(folder: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode))
            for p in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("write", [save_model, export_hf,
                                   functools.partial(save_model, portable=True)])
def test_saved_and_exported_folders_follow_the_umask(tmp_path, quant, umask, write):
    model, _ = load_model(TINY)
    small = swap_embedding(model, quant)
    old = os.umask(umask)
    try:
        folder = write(small, tmp_path / "m")
    finally:
        os.umask(old)
    assert modes(folder) == {("d", 0o777 & ~umask), ("f", 0o666 & ~umask)}


# ---------------------------------------------------------------- 4. one line, not a traceback

def test_a_parent_that_is_a_file_is_one_line(tmp_path, quant):
    model, _ = load_model(TINY)
    small = swap_embedding(model, quant)
    (tmp_path / "file").write_text("x")
    for write in (save_model, export_hf):
        for where in (tmp_path / "file" / "m", tmp_path / "file" / "a" / "m"):
            with pytest.raises(ConfigError, match="file is a file, not a folder") as err:
                write(small, where)
            one_line(err)
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("failure", ["safetensors", "oserror", "meta"])
def test_a_full_disk_is_one_line_and_keeps_the_old_folder(tmp_path, quant, monkeypatch, failure):
    import safetensors.numpy
    from safetensors import SafetensorError
    model, _ = load_model(TINY)
    first = save_model(swap_embedding(model, quant), tmp_path / "m", meta={"n": 1})

    def full(*a, **k):
        if failure == "safetensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        raise OSError(28, "No space left on device")
    if failure == "meta":
        monkeypatch.setattr(Path, "write_text", full)
    else:
        monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(DirjaxError, match="cannot write .*m: .*No space left on device") as err:
        save_model(swap_embedding(model, quant, "original"), tmp_path / "m", meta={"n": 2})
    one_line(err)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert json.loads((first / MODEL_FILE).read_text())["meta"] == {"n": 1}


def test_meta_that_is_not_json_is_one_line_before_anything_is_written(tmp_path, quant):
    model, _ = load_model(TINY)
    for meta in ({"f": object()}, {"a": np.float32(1)}, ["not", "a", "dict"]):
        with pytest.raises(ConfigError, match="meta must be a dict of JSON values") as err:
            save_model(swap_embedding(model, quant), tmp_path / "m", meta=meta)
        one_line(err)
    assert not (tmp_path / "m").exists()


@pytest.fixture
def saved_quant(tmp_path, quant):
    model, tok = load_model(TINY)
    small = swap_embedding(model, quant)
    return save_model(small, tmp_path / "m"), logits(small, tok)


def test_a_flipped_byte_in_the_embedding_is_one_line(saved_quant):
    folder, _ = saved_quant
    data = bytearray((folder / ARRAYS).read_bytes())
    data[len(data) // 2] ^= 0x10       # in the packed codes: it would decode to another table
    (folder / ARRAYS).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="embedding/ is damaged or changed") as err:
        load_model(folder)
    one_line(err)
    from dirjax.saved import _files_digest
    rewrite(folder, MODEL_FILE, embedding_digest=_files_digest(folder / EMBEDDING_DIR))
    with pytest.raises(WeightsError, match="embedding.safetensors is damaged") as err:
        load_model(folder)          # meta.json's arrays digest catches it all the same
    one_line(err)
    with pytest.raises(WeightsError, match="is damaged"):
        load_compressed(folder / EMBEDDING_DIR)


@pytest.mark.parametrize("fields,words", [
    ({"vocab_size": 10**12, "vocab": 10**12}, "vocab_size is 1000000000000, not an integer in"),
    ({"vocab_size": 10**12, "vocab": 10**12, "width": 4}, "vocab_size is 1000000000000"),
    ({"features": 10**9}, "features is 1000000000, not an integer in"),
    ({"group": 0}, "group is 0, not an integer in [1,"),
    ({"group": 5}, "group 5 does not divide features"),
    ({"group": 2}, "array scale is"),
    ({"group": True}, "group is True"),
    ({"width": 0}, "width is 0"),
    ({"vocab": 7}, "vocab is 7, vocab_size x features say"),
    ({"seed": -1}, "seed is -1"),
])
def test_sizes_meta_json_claims_are_checked_before_any_allocation(saved_quant, fields, words):
    """A tampered meta.json (its digests made to agree): one line, before `restore` allocates
    by its sizes (a 1e12-row table was a MemoryError, group 0 a ZeroDivisionError at the
    first forward)."""
    folder, _ = saved_quant
    rewrite(folder / EMBEDDING_DIR, "meta.json", **fields)
    redigest(folder)
    for load in (lambda: load_model(folder), lambda: load_compressed(folder / EMBEDDING_DIR)):
        with pytest.raises(WeightsError) as err:
            load()
        assert words in one_line(err)


def test_low_rank_and_vector_quantised_fields_are_checked(tmp_path):
    from dirjax.compress.vq import VQEmbedding
    rng = np.random.default_rng(0)
    svd = save_compressed(compress(rng.standard_normal((60, 8)).astype(np.float32), rank=3,
                                   method="svd"), tmp_path / "svd")
    vq = save_compressed(VQEmbedding(np.zeros(50, np.uint8), [rng.integers(0, 4, (50, 4))],
                                     [rng.standard_normal((4, 2))], [(2, 2)], None, 8,
                                     gain_mode="none", method="vq"), tmp_path / "vq")
    for folder in (svd, vq):
        load_compressed(folder)     # as saved: fine
    cases = [(svd, {"rank": 0}, "rank is 0"), (svd, {"rank": 4}, "array codes is [60, 3]"),
             (svd, {"rank": 9}, "rank is 9, not an integer in [1, 8]"),
             (vq, {"tiers": [[0, 2]]}, "group is 0"), (vq, {"tiers": [[3, 2]]}, "does not divide"),
             (vq, {"tiers": [[2, 3]]}, "array book_0 is [4, 2]"),
             (vq, {"rows_per_tier": [49]}, "add up to 49"),
             (vq, {"tiers": "x"}, "not two lists"), (vq, {"tiers": [[2]]}, "not [group, bits]")]
    for folder, fields, words in cases:
        good = (folder / "meta.json").read_text()
        rewrite(folder, "meta.json", **fields)
        with pytest.raises(WeightsError) as err:
            load_compressed(folder)
        assert words in one_line(err), (fields, str(err.value))
        (folder / "meta.json").write_text(good)


def test_a_tampered_model_file_is_one_line(saved_quant):
    folder, _ = saved_quant
    for fields, words in [({"dtype": "evil"}, "dtype must be one of"),
                          ({"dtype": 123}, "dtype is not what save_model writes"),
                          ({"source": 5}, "source is not what"),
                          ({"weights": {"embedding": "x", "shape": [10**3]}}, "weights"),
                          ({"tokenizer_fingerprint": None}, "tokenizer_fingerprint is not")]:
        good = (folder / MODEL_FILE).read_text()
        rewrite(folder, MODEL_FILE, **fields)
        with pytest.raises(WeightsError) as err:
            load_model(folder)
        assert words in one_line(err), fields
        (folder / MODEL_FILE).write_text(good)


def test_the_first_format_still_loads(saved_quant):
    """dirjax.model/1 (no tokenizer fingerprint, no digests): loaded with the checks its fields
    allow; its fingerprint is checked whatever the dtype."""
    folder, want = saved_quant
    info = json.loads((folder / MODEL_FILE).read_text())
    for k in ("tokenizer_fingerprint", "embedding_digest", "weights"):
        info.pop(k, None)
    info["format"] = "dirjax.model/1"
    (folder / MODEL_FILE).write_text(json.dumps(info))
    meta = json.loads((folder / EMBEDDING_DIR / "meta.json").read_text())
    meta.pop("arrays_digest", None)
    (folder / EMBEDDING_DIR / "meta.json").write_text(json.dumps(meta))
    back, tok = load_model(folder, dtype=jnp.float32)
    np.testing.assert_array_equal(logits(back, tok), want)
    rewrite(folder, MODEL_FILE, fingerprint="0" * 40)
    with pytest.raises(WeightsError, match="other weights"):
        load_model(folder, dtype=jnp.float32)


# ---------------------------------------------------------------- 5. saves that travel

@pytest.mark.parametrize("output", ["tied", "original"])
def test_a_portable_save_loads_with_its_source_deleted(tmp_path, quant, output):
    src = copy_tiny(tmp_path)
    model, tok = load_model(src)
    small = swap_embedding(model, quant, output)
    want = logits(small, tok)
    folder = save_model(small, tmp_path / "m", portable=True)
    source_bytes = (src / "model.safetensors").stat().st_size
    shutil.rmtree(src)
    back, tok2 = load_model(folder)
    np.testing.assert_array_equal(logits(back, tok2), want)
    assert tok2.get_vocab() == tok.get_vocab()
    assert (back.out_embedding is back.embedding) == (output == "tied")
    weights = (folder / WEIGHTS_DIR / "model.safetensors").stat().st_size
    table = quant.vocab_size * quant.features * 4
    # the token table is left out unless the head keeps it
    assert abs(weights - (source_bytes - (table if output == "tied" else 0))) < 4096
    info = json.loads((folder / MODEL_FILE).read_text())
    assert info["source"] == str(src.resolve()) and info["weights"]["shape"] == \
        [quant.vocab_size, quant.features]
    # checked like a reference save: changed weights are refused, in any dtype
    again, _ = load_model(folder, dtype=jnp.bfloat16)
    assert origin(again)["dtype"] == "bfloat16"
    scale_down_proj(folder / WEIGHTS_DIR)
    redigest(folder)
    with pytest.raises(WeightsError, match="now gives other weights") as err:
        load_model(folder, dtype=jnp.bfloat16)
    one_line(err)


def test_a_model_from_a_portable_save_saves_and_exports_again(tmp_path, quant):
    src = copy_tiny(tmp_path)
    model, tok = load_model(src)
    small = swap_embedding(model, quant)
    want = logits(small, tok)
    portable = save_model(small, tmp_path / "p", portable=True)
    shutil.rmtree(src)
    back, _ = load_model(portable)
    ref, _ = load_model(save_model(back, tmp_path / "ref"))          # refers to p/weights
    np.testing.assert_array_equal(logits(ref, tok), want)
    again, _ = load_model(save_model(back, tmp_path / "p2", portable=True))
    np.testing.assert_array_equal(logits(again, tok), want)
    hf, _ = load_model(export_hf(back, tmp_path / "hf"))
    assert np.abs(logits(hf, tok) - want).max() < 1e-4


def test_portable_gpt2_gemma3_bert_and_a_gguf_source(tmp_path):
    from test_gguf import write_tiny_gguf

    from dirjax.compress.cache import tokenizer_fingerprint
    (tmp_path / "gguf").mkdir()
    gguf_file = write_tiny_gguf(tmp_path / "gguf" / "tiny.gguf")
    for source in (FIXTURES / "tiny-gpt2", FIXTURES / "tiny-gemma3", FIXTURES / "tiny-bert",
                   gguf_file):
        copy = tmp_path / "copy" / source.name
        copy.parent.mkdir(exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, copy)
        model, tok = load_model(copy)
        emb = compress(np.asarray(model.embedding.table(), np.float32), rate=6, method="quant")
        small = swap_embedding(model, emb)
        want = logits(small, tok)
        folder = save_model(small, tmp_path / f"{source.name}-p", portable=True)
        shutil.rmtree(tmp_path / "copy")
        back, tok2 = load_model(folder)
        np.testing.assert_array_equal(logits(back, tok2), want)
        assert tokenizer_fingerprint(tok2) == tokenizer_fingerprint(tok), source.name


def test_a_reference_save_follows_a_moved_source(tmp_path, quant):
    src = copy_tiny(tmp_path, "before")
    model, tok = load_model(src)
    small = swap_embedding(model, quant)
    folder = save_model(small, tmp_path / "m")
    moved = tmp_path / "after"
    src.rename(moved)
    with pytest.raises(UnknownSourceError, match="no such file or directory") as err:
        load_model(folder)
    one_line(err)
    back, _ = load_model(folder, source=moved)
    np.testing.assert_array_equal(logits(back, tok), logits(small, tok))
    assert origin(back)["source"] == str(moved.resolve())    # saved again, it refers there
    again = save_model(back, tmp_path / "m2")
    assert json.loads((again / MODEL_FILE).read_text())["source"] == str(moved.resolve())
    with pytest.raises(WeightsError, match="untied now gives other weights"):
        load_model(folder, source=TINY / "untied")              # still checked
    with pytest.raises(ConfigError, match="source= tells a saved folder"):
        load_model(TINY, source=moved)


def test_a_runs_saved_compression_loads_onto_its_model(tmp_path):
    from dirjax.config import base_config
    from dirjax.experiment import run_experiment
    c = base_config()
    c.update(model=str(TINY), max_tokens=128, max_length=64, batch_size=2, rates=(8.0,),
             methods=("quant",), outputs=("tied", "original"), progress=False)
    rows = run_experiment(c, tmp_path / "work")
    where = next(r["embedding_dir"] for r in rows if r["method"] == "quant")
    assert Path(where).parent == tmp_path / "work" / "embeddings"
    base, tok = load_model(TINY)
    emb = load_compressed(where)
    for output in ("tied", "original"):
        by_hand = swap_embedding(base, emb, output)
        got, _ = load_model(TINY, embedding=where, output=output)
        np.testing.assert_array_equal(logits(got, tok), logits(by_hand, tok))
        assert (got.out_embedding is got.embedding) == (output == "tied")
        # and it saves like any compressed model
        back, _ = load_model(save_model(got, tmp_path / f"saved-{output}"))
        np.testing.assert_array_equal(logits(back, tok), logits(by_hand, tok))
    got, _ = load_model(TINY, dtype=jnp.bfloat16, embedding=where)
    np.testing.assert_array_equal(
        logits(got, tok), logits(swap_embedding(load_model(TINY, dtype=jnp.bfloat16)[0], emb),
                                 tok))
    # another model of the same shapes: the table it was made from differs
    with pytest.raises(WeightsError, match="made from another table") as err:
        load_model(TINY / "untied", embedding=where)
    one_line(err)
    with pytest.raises(ConfigError, match="output must be one of"):
        load_model(TINY, embedding=where, output="both")
    with pytest.raises(WeightsError, match="not a saved compressed embedding"):
        load_model(TINY, embedding=tmp_path)
