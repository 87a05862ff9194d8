"""One registry for methods and their embedding classes, and one key rule for both jobs:

- a method registered at run time, with its own module class, is cached, reused, saved with
  its model and loaded back like a built-in one (the class is found by the name meta.json
  holds);
- a row's key holds every config field but those listed (with why) as changing no row, so a
  field added to either job's config changes the keys.
"""
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import dirjax
from dirjax import config as config_lib
from dirjax.compress import METHODS, compress, load_compressed, register_method, save_compressed
from dirjax.compress.cache import digest
from dirjax.config import base_config, check_config
from dirjax.errors import ConfigError, WeightsError
from dirjax.experiment import JOBS, NOT_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"

# A config file is Python: this one defines a method whose module keeps the table in fp16
# (rate 2 against fp32) and registers both before returning its config.
TOY_CONFIG = '''
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax.compress import register_method
from dirjax.config import base_config
from dirjax.embedding import Described


class Fp16Embedding(nnx.Module, Described):
    """The table [V, d] in fp16."""

    def __init__(self, table, *, method="fp16", metrics=None, meta=None):
        self.half = nnx.Variable(jnp.asarray(table, jnp.float16))
        self.method, self.metrics, self.meta = method, metrics, meta

    @property
    def vocab_size(self):
        return self.half.shape[0]

    @property
    def features(self):
        return self.half.shape[1]

    def __call__(self, ids):
        return jnp.take(self.half[...], ids, axis=0).astype(jnp.float32)

    def attend(self, h):
        return h @ self.half[...].T.astype(h.dtype)

    def attend_chunk(self, h, start, size):
        rows = jax.lax.dynamic_slice_in_dim(self.half[...], start, size, axis=0)
        return h @ rows.T.astype(h.dtype)

    def table(self):
        return self.half[...].astype(jnp.float32)

    def storage_bytes(self):
        return 2 * self.half.size

    def export(self):
        return {"half": np.asarray(self.half[...])}, {}

    @classmethod
    def restore(cls, arrays, static, **described):
        return cls(arrays["half"], **described)


def fp16(table, *, rate=None, rank=None):
    return Fp16Embedding(table)


register_method("fp16", fp16, module=Fp16Embedding)


def get_config():
    c = base_config()
    c.model = MODEL
    c.methods, c.rates, c.outputs = ("fp16",), (2.0,), ("tied",)
    c.max_tokens, c.max_length, c.progress = 128, 64, False
    return c
'''


@pytest.fixture
def methods():
    """METHODS as it was before the test (a test's registrations are undone)."""
    before = dict(METHODS)
    yield METHODS
    METHODS.clear()
    METHODS.update(before)


def logits(model, ids) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids, jnp.int32)))


def test_a_method_registered_at_run_time_is_cached_reused_saved_and_loaded(
        tmp_path, run_here, methods):
    config = tmp_path / "toy.py"
    config.write_text(f"MODEL = {str(TINY)!r}\n" + TOY_CONFIG)
    work = tmp_path / "work"
    first = run_here("--config", str(config), "--workdir", str(work), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    rows = json.loads((work / "results.json").read_text())
    toy = rows[-1]
    assert toy["method"] == "fp16" and not toy["reused"] and toy["achieved_rate"] == 2.0
    meta = json.loads((Path(toy["embedding_dir"]) / "meta.json").read_text())
    assert meta["class"] == "Fp16Embedding" and meta["method"] == "fp16"

    # another evaluation setting: new rows, the saved compression read back (a new class
    # object: the config file ran again), not made again
    second = run_here("--config", str(config), "--config.max_tokens=100", "--workdir",
                      str(work), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    again = json.loads((work / "results.json").read_text())[len(rows):]
    assert [r["method"] for r in again] == ["original", "fp16"]
    assert again[1]["reused"] and again[1]["embedding_dir"] == toy["embedding_dir"]
    assert again[1]["compress_seconds"] == pytest.approx(toy["compress_seconds"])
    assert again[1]["key"] != toy["key"] and again[1]["tokens"] < toy["tokens"]

    # and with a whole model: save_model / load_model, identical logits
    emb = load_compressed(toy["embedding_dir"])
    assert type(emb).__name__ == "Fp16Embedding" and emb.half[...].dtype == jnp.float16
    model, _ = dirjax.load_model(TINY)
    compressed = dirjax.swap_embedding(model, emb)
    saved = dirjax.save_model(compressed, tmp_path / "saved")
    back, _ = dirjax.load_model(saved)
    assert type(back.embedding) is METHODS["fp16"].module_class()
    ids = np.array([[1, 5, 9, 42, 7]])
    np.testing.assert_array_equal(logits(back, ids), logits(compressed, ids))
    assert not np.array_equal(logits(back, ids), logits(model, ids))   # fp16 rows: not the same


def test_a_class_no_method_registers_is_one_line_on_load(tmp_path, methods):
    """Saved by a method registered at run time, loaded where it is not registered."""
    class Dense(dirjax.Embedding):   # a plain module that is not its method's class
        pass
    register_method("svd2", METHODS["svd"].fn, low_rank=True,
                    module="dirjax.compress.lowrank:CompressedEmbedding")
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    saved = save_compressed(compress(table, rank=2, method="svd2"), tmp_path / "e")
    assert type(load_compressed(saved)).__name__ == "CompressedEmbedding"
    info = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**info, "class": "Fp16Embedding"}))
    with pytest.raises(WeightsError, match="'Fp16Embedding'.*not registered.*register_method"):
        load_compressed(saved)
    # a module whose class no method registers is refused before anything is written
    dense = Dense(table)
    dense.method = "svd2"
    with pytest.raises(ConfigError, match="Dense.*register_method"):
        save_compressed(dense, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_method_without_a_module_is_refused_by_the_config_check(methods):
    """Its results could be neither cached nor reused: refused before a model is loaded."""
    register_method("nomodule", lambda table, *, rate=None, rank=None: None)
    c = base_config()
    c.methods = ("nomodule",)
    with pytest.raises(ConfigError, match="'nomodule' registers no embedding class"):
        check_config(c)


def test_the_first_saved_format_still_loads(tmp_path):
    """dirjax.compressed/1: low rank only, no class in meta.json, arrays in Orbax."""
    import orbax.checkpoint as ocp
    table = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    emb = compress(table, rank=3, method="svd")
    arrays, _ = emb.export()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((tmp_path / "old" / "arrays").absolute(), arrays)
        ckpt.wait_until_finished()
    (tmp_path / "old" / "meta.json").write_text(json.dumps({
        "format": "dirjax.compressed/1", "method": "svd", "rank": 3, "vocab_size": 60,
        "features": 8, "metrics": emb.metrics, "meta": {}}))
    back = load_compressed(tmp_path / "old")
    assert type(back) is type(emb) and back.method == "svd"
    np.testing.assert_array_equal(np.asarray(back.table()), np.asarray(emb.table()))


# ---------------------------------------------------------------------------- row keys

def job_settings(job: str, tmp_path, **fields) -> dict:
    c = base_config(job)
    c.model = "unused"     # settings are read off the config: nothing is loaded
    for name, value in fields.items():
        setattr(c, name, value)
    got = JOBS[job](check_config(c), tmp_path)
    got.bos = False        # what EvalJob.prepare finds for tiny-llama's tokenizer
    return got.settings()


@pytest.mark.parametrize("job,table", [("eval", "EVAL"), ("eval", "COMMON"),
                                       ("finetune", "FINETUNE"), ("finetune", "COMMON")])
def test_a_field_added_to_a_config_is_in_the_row_keys(tmp_path, monkeypatch, job, table):
    monkeypatch.setitem(getattr(config_lib, table), "new_knob", 1)
    one, two = (job_settings(job, tmp_path, new_knob=v) for v in (1, 2))
    assert one["new_knob"] == 1 and digest(one) != digest(two)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_field_left_out_of_the_keys_is_a_field_and_says_why(job):
    left_out = {**NOT_SETTINGS, **JOBS[job].NOT_SETTINGS, **getattr(JOBS[job], "SQUAD_ONLY", {})}
    assert set(left_out) <= set(base_config(job).keys())
    assert all(isinstance(why, str) and why for why in left_out.values())


def test_the_keys_of_todays_rows_are_unchanged(tmp_path):
    """Work directories reuse finished rows by key: the default settings of each job digest
    as they did when the keys were built by inclusion (a change here redoes every row)."""
    assert digest(job_settings("eval", tmp_path)) == "b4b83b0b6e13d93c333ff32e3e359427ead69a0b"
    assert digest(job_settings("finetune", tmp_path)) == \
        "2fdac534bb0dc99c648ed37e2211c36abc2200ba"
    assert digest(job_settings("finetune", tmp_path, tasks=("rte", "squad"), seeds=(1, 2),
                               reference=False)) == "e2ad59388ed7fb74d68121c23245c79591a4a66e"
