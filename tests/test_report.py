"""Reports: markdown table, JSON rows, PNG plot, all written atomically."""
import json
import os

import pytest

from dirjax import report

ROWS = [
    dict(model="tiny", method="original", rate=1.0, rank=None, output=None, dataset="stdlib",
         metric="ppl", value=30.61, tokens=8160, embedding_bytes=113_246_208, seconds=12.3),
    dict(model="tiny", method="svd", rate=10.0, rank=53, output="tied", dataset="stdlib",
         metric="ppl", value=25909.4, tokens=8160, embedding_bytes=10_545_408, seconds=11.0,
         mean_cosine=0.8123),
    dict(model="tiny", method="svd", rate=5.0, rank=110, output="tied", dataset="stdlib",
         metric="ppl", value=6000.0, tokens=8160, embedding_bytes=21_883_392, seconds=11.0,
         mean_cosine=0.9),
    dict(model="tiny", method="ae", rate=10.0, rank=53, output="original", dataset="stdlib",
         metric="ppl", value=6256.0, tokens=8160, embedding_bytes=10_545_408, seconds=10.5,
         mean_cosine=0.7),
]


def test_markdown_table_has_a_row_per_result():
    md = report.markdown_table(ROWS)
    lines = md.strip().split("\n")
    assert lines[0].startswith("| model | method | output | rate | rank |")
    assert "mean cos" in lines[0]
    assert len(lines) == 2 + len(ROWS)
    assert "| tiny | original | - | 1 | - | stdlib | ppl | 30.61 | 8,160 | 113.25 | - | 12.3 |" in md
    assert "| tiny | svd | tied | 10 | 53 | stdlib | ppl | 25,909.40 | 8,160 | 10.55 | 0.8123 | 11.0 |" in md


def test_write_results_writes_all_three_files(tmp_path):
    report.write_results(ROWS, tmp_path)
    assert report.read_results(tmp_path) == ROWS
    assert (tmp_path / "results.md").read_text() == report.markdown_table(ROWS)
    png = (tmp_path / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(os.listdir(tmp_path)) == ["plot.png", "results.json", "results.md"]


def test_plot_of_sts_rows_and_two_metrics(tmp_path):
    rows = [dict(r, metric="spearman_x100", value=80.0 - i) for i, r in enumerate(ROWS)]
    report.plot(rows + ROWS, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


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
    text = verdict(rows)
    assert "best quant (tied) 24.00 (1.20x the original)" in text
    assert "low rank alone does not keep this model (best svd (tied) 900.00 (45.00x" in text
    assert "try methods" not in text                  # something that works was in the sweep
    assert "try methods quant_gptq / vq" in verdict(rows[:2])
    assert "try method vq" in verdict([rows[0], {**rows[1], "rate": 32.0}])   # no scalar codes
    rows[1]["value"] = 29.0                           # within 1.5x: no warning
    assert "low rank" not in verdict(rows)
    sts = [{**base, "metric": "spearman_x100", "method": "original", "rate": 1.0, "value": 86.0},
           {**base, "metric": "spearman_x100", "method": "ae", "rate": 5.0, "value": 80.5}]
    assert "-5.50 points" in verdict(sts) and "low rank alone" in verdict(sts)
