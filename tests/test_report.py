"""Reports: the printed tables (80 columns, plain labels), JSON rows, PNG plots, all written
atomically."""
import json
import os

import pytest

from dirjax import report

ROWS = [
    dict(model="/some/where/tiny-llama", method="original", rate=1.0, rank=None, output=None,
         dataset="stdlib/heldout", metric="ppl", value=30.61, tokens=8160,
         embedding_bytes=113_246_208, achieved_rate=1.0, seconds=12.3),
    dict(model="/some/where/tiny-llama", method="svd", rate=10.0, rank=53, output="tied",
         dataset="stdlib/heldout", metric="ppl", value=25909.4, tokens=8160,
         embedding_bytes=10_545_408, achieved_rate=10.74, seconds=11.0, mean_cosine=0.8123,
         svd_solver="randomized", compress_seconds=1234.5),
    dict(model="/some/where/tiny-llama", method="svd", rate=5.0, rank=110, output="tied",
         dataset="stdlib/heldout", metric="ppl", value=6000.0, tokens=8160,
         embedding_bytes=21_883_392, achieved_rate=5.17, seconds=11.0, mean_cosine=0.9),
    dict(model="/some/where/tiny-llama", method="quant_gptq", rate=10.0, rank=None,
         output="original", dataset="stdlib/heldout", metric="ppl", value=30.92, tokens=8160,
         embedding_bytes=11_324_620, achieved_rate=10.0, seconds=10.5, mean_cosine=0.99),
]


def test_the_printed_table_fits_80_columns_with_plain_labels():
    text = report.summary(ROWS)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    lines = text.splitlines()
    assert lines[0] == "tiny-llama: perplexity on stdlib/heldout (8,160 tokens)"   # not a path
    assert lines[1].split("|")[1:-1] == [" method       ", " output     ", " rate asked ",
                                         " reached ", "    ppl ", " ppl ratio "]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[3:7]]
    assert cells == [["uncompressed", "-", "1", "1.00", "30.61", "1.00x"],
                     ["svd", "tied", "10", "10.74", "25,909", "846x"],
                     ["svd", "tied", "5", "5.17", "6,000", "196x"],
                     ["quant_gptq", "input only", "10", "10.00", "30.92", "1.01x"]]
    # the stored names stay in the record: row keys and caches depend on them
    assert "original" not in "\n".join(lines[:7]) and ROWS[3]["output"] == "original"
    # seconds, bytes and the SVD solver are details: in results.md, not on the terminal
    assert "randomized" not in text and "1,234.5" not in text


def test_long_verdicts_wrap_and_one_model_per_block():
    other = [dict(r, model="google/gemma-3-270m", value=r["value"] * 1.5) for r in ROWS]
    text = report.summary(ROWS + other)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "gemma-3-270m: perplexity on stdlib/heldout" in text
    assert text.count("| uncompressed |") == 2


def test_scores_show_their_change_in_points_and_no_empty_output_column():
    sts = [dict(r, output=None, metric="spearman_x100", value=v)
           for r, v in zip(ROWS, (86.73, 71.40, 77.79, 86.70))]
    text = report.summary(sts)
    assert "STS Spearman x100" in text and "spearman_x100" not in text
    assert "| output |" not in text
    assert "|         10 |   10.74 |    71.40 | -15.33 |" in text


def test_seed_summary_fits_80_columns():
    rows = [dict(job="finetune", task="rte", model="minilm-l6", dataset="glue/rte/dev",
                 metric="accuracy", method=m, rate=rate, achieved_rate=rate, seed=s, lr=2e-5,
                 epochs=3, value=v + 0.01 * s)
            for s in range(3) for m, rate, v in (("original", 1.0, 0.57), ("svd", 10.0, 0.55))]
    text = report.summary(rows)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "| svd          |         10 |   10.00 | 56.0 ± 1.0 |     3 |   -2.0 |" in text


def test_write_results_writes_all_three_files(tmp_path):
    report.write_results(ROWS, tmp_path)
    assert report.read_results(tmp_path) == ROWS
    md = (tmp_path / "results.md").read_text()
    assert md.startswith(report.summary(ROWS)) and "## Details" in md
    assert "randomized" in md and "1234.5" in md and "10.55" in md   # solver, seconds, MB
    png = (tmp_path / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(os.listdir(tmp_path)) == ["plot.png", "results.json", "results.md"]


def test_plot_points_sit_at_the_rate_reached_as_a_ratio():
    base = ROWS[0]["value"]
    series = dict(report._series(ROWS, "ppl", base, 1.0))
    assert series[("svd", "tied")] == [(5.17, 6000.0 / base), (10.74, 25909.4 / base)]


def test_coincident_points_are_spread_apart():
    pts = [("a", 10.0, 1.0), ("b", 10.0, 1.0), ("c", 10.0, 1.001), ("d", 2.0, 500.0)]
    shift = report._dodge(pts, logy=True, xspan=1.0, yspan=3.0)
    assert len({shift["a"], shift["b"], shift["c"]}) == 3 and shift["d"] == 0
    assert shift["a"] + shift["b"] + shift["c"] == pytest.approx(0)   # centred on the truth


def test_plots_of_one_rate_several_rates_scores_and_nothing(tmp_path):
    sts = [dict(r, metric="spearman_x100", value=80.0 - i) for i, r in enumerate(ROWS)]
    one_rate = [r for r in ROWS if r["rate"] != 5.0]
    for i, rows in enumerate((ROWS, one_rate, sts + ROWS, [], ROWS[:1])):
        report.plot(rows, tmp_path / f"p{i}.png")
        assert (tmp_path / f"p{i}.png").read_bytes()[:4] == b"\x89PNG"


def test_atomic_write_keeps_the_old_file_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    report.atomic_write(target, json.dumps([1]))

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        report.atomic_write(target, json.dumps([1, 2]))
    assert json.loads(target.read_text()) == [1]
    assert os.listdir(tmp_path) == ["results.json"]      # no temporary file left behind


def test_verdict_says_when_low_rank_does_not_keep_the_model():
    from dirjax.report import verdict
    base = {"model": "m", "dataset": "d", "metric": "ppl", "output": "tied"}
    rows = [{**base, "method": "original", "rate": 1.0, "value": 20.0},
            {**base, "method": "svd", "rate": 10.0, "value": 900.0},
            {**base, "method": "quant", "rate": 10.0, "value": 24.0}]
    text = " ".join(verdict(rows).split())     # unwrapped
    assert "best quant (tied) 24.00 (ppl ratio 1.20x)" in text
    assert "low rank alone does not keep this model (best svd (tied) 900.0 (ppl ratio 45.0x" in text
    assert "try methods" not in text                  # something that works was in the sweep
    assert "try methods quant_gptq / vq" in " ".join(verdict(rows[:2]).split())
    assert "try method vq" in verdict([rows[0], {**rows[1], "rate": 32.0}])   # no scalar codes
    rows[1]["value"] = 29.0                           # within 1.5x: no warning
    assert "low rank" not in verdict(rows)
    rows[2]["output"] = "original"
    assert "best quant (input only)" in verdict(rows)
    sts = [{**base, "metric": "spearman_x100", "method": "original", "rate": 1.0, "value": 86.0},
           {**base, "metric": "spearman_x100", "method": "ae", "rate": 5.0, "value": 80.5}]
    assert "-5.50 points" in verdict(sts) and "low rank alone" in verdict(sts)
