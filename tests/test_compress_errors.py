"""Bad input ends in one clear DirjaxError before any work, and leaves nothing written."""
import numpy as np
import pytest

from dirjax.compress import compress, load_compressed, save_compressed
from dirjax.errors import ConfigError, DataError, WeightsError


def good(v=64, d=8):
    return np.random.default_rng(0).standard_normal((v, d)).astype(np.float32)


def with_value(value):
    t = good()
    t[5, 3] = value
    return t


@pytest.mark.parametrize("method", ["svd", "ae"])
@pytest.mark.parametrize("t,kw,err,match", [
    (with_value(np.nan), {"rank": 2}, DataError, "NaN/Inf"),
    (with_value(np.inf), {"rank": 2}, DataError, "NaN/Inf"),
    (np.zeros((0, 8), np.float32), {"rank": 2}, DataError, "empty"),
    (np.zeros((8,), np.float32), {"rank": 2}, DataError, "2-D"),
    (good(), {"rank": 8}, ConfigError, ">= 8"),
    (good(), {"rank": 0}, ConfigError, "< 1"),
    (good(), {"rate": 500}, ConfigError, "< 1"),
    (good(), {}, ConfigError, "exactly one"),
    (good(), {"rate": 2, "rank": 2}, ConfigError, "exactly one"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, method, t, kw, err, match):
    workdir = tmp_path / "work"
    opts = {"workdir": str(workdir), "progress": False} if method == "ae" else {}
    with pytest.raises(err, match=match) as info:
        compress(t, method=method, **kw, **opts)
    assert "\n" not in str(info.value)
    assert not workdir.exists()


def test_unknown_method_and_option(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        compress(good(), rank=2, method="pca")
    with pytest.raises(ConfigError, match="unknown option"):
        compress(good(), rank=2, method="ae", epoch=3, workdir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match="multiple of 4 devices"):
        compress(good(), rank=2, method="ae", batch_size=6, progress=False)


def test_save_load_round_trip_and_corrupt_files(tmp_path):
    emb = compress(good(), rank=3, method="svd")
    out = save_compressed(emb, tmp_path / "emb", {"source": "toy"})
    back = load_compressed(out)
    np.testing.assert_array_equal(np.asarray(back.codes[...]), np.asarray(emb.codes[...]))
    assert back.metrics == emb.metrics and back.rank == 3 and back.method == "svd"
    assert (out / "meta.json").read_text().count('"source": "toy"') == 1
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]  # no temporary left behind

    (out / "meta.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_compressed(out)
    with pytest.raises(WeightsError, match="no meta.json"):
        load_compressed(tmp_path / "nowhere")


def test_a_failed_save_keeps_the_previous_result(tmp_path):
    emb = compress(good(), rank=3, method="svd")
    save_compressed(emb, tmp_path / "emb", {"run": 1})
    with pytest.raises(TypeError):
        save_compressed(emb, tmp_path / "emb", {"run": object()})  # not JSON
    assert '"run": 1' in (tmp_path / "emb" / "meta.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]


def test_a_registered_method_is_dispatched_and_measured():
    from dirjax.compress import METHODS, register_method
    from dirjax.embedding import Embedding

    def halve_precision(table, *, rate=None, rank=None, **options):
        emb = Embedding(np.asarray(table).astype(np.float16).astype(np.float32))
        emb.metrics, emb.options = {}, options
        return emb

    register_method("fp16-toy", halve_precision)
    try:
        emb = compress(good(), rate=2, method="fp16-toy", tag=1)
        assert emb.options == {"tag": 1}
        assert emb.metrics["cos_min"] > 0.9999 and 0 < emb.metrics["rel_frobenius"] < 1e-3
    finally:
        METHODS.pop("fp16-toy")
