"""End to end on the tiny checkpoints: one rate, all outputs written, compressions reused."""
import json
from pathlib import Path

import pytest

from dirjax import report
from dirjax.errors import ConfigError, DataError
from dirjax.experiment import base_config, check_config, run_experiment

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_config(**over):
    c = base_config()
    c.model = str(FIXTURES / "tiny-llama")
    c.max_tokens = 300
    c.max_length = 64
    c.batch_size = 2
    c.rates = (4.0,)
    c.methods = ("svd", "ae")
    c.method_options.ae = {"epochs": 2, "batch_size": 64}
    c.progress = False
    for k, v in over.items():
        setattr(c, k, v)
    return c


def test_one_rate_end_to_end_writes_everything_and_reuses_compressions(tmp_path):
    rows = run_experiment(tiny_config(), tmp_path)
    # original + 2 methods x 1 rate x 2 outputs
    assert [(r["method"], r["output"]) for r in rows] == [
        ("original", None), ("svd", "tied"), ("svd", "original"), ("ae", "tied"),
        ("ae", "original")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(rows))
    md = (tmp_path / "results.md").read_text()
    assert md.startswith(report.summary(rows))
    assert "| ae | tied | 4 |" in " ".join(t for t in md.split(" ") if t)   # cells padded
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    original = rows[0]
    assert original["metric"] == "ppl" and original["embedding_bytes"] == 1000 * 64 * 4
    assert original["tokens"] == 300 - 5                   # 5 windows of <= 64, no overlap
    assert original["rank"] is None and original["svd_solver"] is None
    for r in rows[1:]:
        # rank 14 for 1000x64 at rate 4: (1000*64/4 - 64) / 1064 = 14.98 -> 14
        assert r["rank"] == 14 and r["achieved_rate"] >= 4.0
        assert r["embedding_bytes"] == 4 * (1000 * 14 + 14 * 64 + 64)
        # the tiny Llama is tied: output "original" keeps the fp32 table for the head
        head = 1000 * 64 * 4 if r["output"] == "original" else 0
        assert r["model_bytes"] == (original["model_bytes"] - 1000 * 64 * 4
                                    + r["embedding_bytes"] + head)
        assert r["value"] > 0 and r["tokens"] == original["tokens"] and not r["reused"]
        assert Path(r["embedding_dir"]).is_dir() and 0 < r["mean_cosine"] < 1
        # the exact SVD for a table this small (the AE starts at random: no SVD computed)
        assert r["svd_solver"] == ("exact" if r["method"] == "svd" else None)
    # the same method/rate, two outputs: same compression, different models
    assert rows[1]["embedding_dir"] == rows[2]["embedding_dir"]
    assert rows[1]["value"] != rows[2]["value"]

    again = run_experiment(tiny_config(), tmp_path)   # every row found by its key, not redone
    assert all(r.pop("cached") for r in again)
    assert again == json.loads(json.dumps(rows))
    assert json.loads((tmp_path / "results.json").read_text()) == saved   # nothing rewritten

    # another evaluation setting: the compressions are reused, the rows are new and added
    more = run_experiment(tiny_config(max_tokens=200), tmp_path)
    assert all(r["reused"] and "cached" not in r for r in more[1:])
    assert all(r["compress_seconds"] == pytest.approx(a["compress_seconds"])
               for r, a in zip(more[1:], rows[1:]))
    assert len(json.loads((tmp_path / "results.json").read_text())) == 2 * len(rows)


def test_changed_options_do_not_reuse_a_compression(tmp_path):
    first = run_experiment(tiny_config(methods=("svd",), outputs=("tied",)), tmp_path)
    c = tiny_config(methods=("svd",), outputs=("tied",))
    c.method_options.svd = {"seed": 1}
    second = run_experiment(c, tmp_path)
    assert not second[1]["reused"]
    assert first[1]["embedding_dir"] != second[1]["embedding_dir"]
    assert len(list((tmp_path / "embeddings").glob("svd-rate4-*"))) == 2
    # the randomized solver, asked for by name, is recorded as such
    c.method_options.svd = {"exact": False}
    third = run_experiment(c, tmp_path)
    assert third[1]["svd_solver"] == "randomized" and first[1]["svd_solver"] == "exact"


def test_encoder_sts_and_masked_lm(tmp_path):
    data_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    sts = run_experiment(tiny_config(model=str(FIXTURES / "tiny-bert"), task="sts",
                                     dataset="stsb", split="validation", max_examples=40,
                                     data_dir=str(data_dir), methods=("svd",)), tmp_path / "s")
    assert [r["metric"] for r in sts] == ["spearman_x100"] * 3    # tied MLM head: 2 outputs
    assert all(-100 <= r["value"] <= 100 and r["examples"] == 40 for r in sts)
    mlm = run_experiment(tiny_config(model=str(FIXTURES / "tiny-bert"), task="mlm_ppl",
                                     max_examples=8, methods=("svd",), outputs=("tied",)),
                         tmp_path / "m")
    assert [r["metric"] for r in mlm] == ["mlm_ppl"] * 2 and mlm[0]["examples"] == 8


@pytest.mark.parametrize("field,value,match", [
    ("task", "translate", "config.task"),
    ("rates", (0.5,), "rates"),
    ("outputs", ("both",), "outputs"),
    ("stride", 1000, "stride"),
    ("dataset", "stsb", "reads one of"),
])
def test_bad_config_values_fail_before_any_work(tmp_path, field, value, match):
    with pytest.raises(ConfigError, match=match):
        run_experiment(tiny_config(**{field: value}), tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_unknown_field_is_named():
    c = tiny_config()
    c.rate = 5
    with pytest.raises(ConfigError, match="unknown config field.*rate"):
        check_config(c)


def test_unknown_method_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown method.*magic"):
        run_experiment(tiny_config(methods=("svd", "magic")), tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_rate_too_high_for_the_table_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="rank"):
        run_experiment(tiny_config(rates=(4.0, 500.0)), tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_missing_data_file_fails_before_any_work(tmp_path):
    with pytest.raises(DataError, match="missing data file"):
        run_experiment(tiny_config(dataset="wikitext-2-raw", split="test",
                                   data_dir=str(tmp_path)), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_calibrated_quantiser_end_to_end(tmp_path):
    """quant_gptq: counts and hidden states collected from a disjoint text, rate in bytes met,
    the quantised table saved and reused."""
    calibration = {"dataset": "stdlib", "split": "train", "n_hidden": 128}
    c = tiny_config(methods=("quant_gptq",), outputs=("tied",))
    c.method_options = {"quant_gptq": {"calibration": calibration}}
    rows = run_experiment(c, tmp_path)
    q = rows[1]
    assert q["method"] == "quant_gptq" and q["rank"] is None and q["achieved_rate"] >= 4.0
    assert q["embedding_bytes"] <= 1000 * 64 * 4 / 4    # smaller than the original, in bytes
    assert q["mean_cosine"] > 0.99 and q["value"] == pytest.approx(rows[0]["value"], rel=0.05)
    again = run_experiment(c, tmp_path)
    assert again[1]["cached"] and again[1]["value"] == q["value"]
    c.max_tokens = 200                        # another evaluation: the compression is reused
    shorter = run_experiment(c, tmp_path)
    assert shorter[1]["reused"] and shorter[1]["embedding_dir"] == q["embedding_dir"]
    c.max_tokens = 300
    # another calibration text: another compression, not the cached one
    c.method_options = {"quant_gptq": {"calibration": {**calibration, "n_hidden": 64}}}
    other = run_experiment(c, tmp_path)
    assert not other[1]["reused"] and other[1]["embedding_dir"] != q["embedding_dir"]


def test_calibrated_method_without_calibration_gets_a_disjoint_default():
    c = check_config(tiny_config(methods=("quant_freq",)))
    assert c.method_options.quant_freq.calibration.to_dict() == {
        "dataset": "stdlib", "split": "train", "n_hidden": 0}
    c = check_config(tiny_config(methods=("quant_gptq",), dataset="wikitext-2-raw", split="test"))
    assert c.method_options.quant_gptq.calibration.dataset == "wikitext-2"
    assert c.method_options.quant_gptq.calibration.n_hidden == 8192


def test_calibration_on_the_evaluation_text_is_refused(tmp_path):
    c = tiny_config(methods=("quant_freq",))
    c.method_options = {"quant_freq": {"calibration": {"dataset": "stdlib", "split": "heldout"}}}
    with pytest.raises(ConfigError, match="is the evaluation text"):
        run_experiment(c, tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_prompt_continuations_of_the_original_and_the_best_compressed_model(tmp_path):
    rows = run_experiment(tiny_config(methods=("svd",), outputs=("tied", "original"),
                                      prompt="hello world", prompt_tokens=6), tmp_path)
    samples = json.loads((tmp_path / "samples.json").read_text())
    best = min(rows[1:], key=lambda r: r["value"])
    assert [s["model"] for s in samples["samples"]] == [
        "uncompressed", f"svd rate 4 ({report.output_label(best)})"]
    assert samples["samples"][1]["ppl"] == best["value"]
    assert all(isinstance(s["continuation"], str) for s in samples["samples"])
    md = (tmp_path / "samples.md").read_text()
    assert md.startswith("Prompt: 'hello world'") and md.count("\n| ") == 3
