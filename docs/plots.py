"""Redraw the figures of docs/results.md from the figures in its tables.

    .venv/bin/python docs/plots.py [OUT_DIR]      # default: docs/

The runs that measured them kept their results.json on the machine that ran them; these rows
carry the values printed in docs/results.md and the README (each block names its table) and
are drawn by the same `dirjax.report.plot` a run uses. The rate reached (fp32 table bytes / stored bytes) is
recomputed from the byte accounting of the methods, which depends only on the table's shape:
`rate_for_rank` for svd / ae, the 8-bit cap (the quantisers' largest width) for quant* asked
rate 2, the byte budget for quant* and vq elsewhere (spent to within a few bytes).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dirjax.compress.quantize import storage_bytes  # noqa: E402
from dirjax.compress.rate import rank_for_rate, rate_for_rank  # noqa: E402
from dirjax.report import plot  # noqa: E402

SHAPES = {"smollm2-135m": (49152, 576), "minilm-l6": (30522, 384), "gemma3-270m": (262144, 640)}


def reached(model: str, method: str, rate: float) -> float:
    v, d = SHAPES[model]
    if method in ("svd", "ae"):
        return rate_for_rank(v, d, rank_for_rate(v, d, rate))
    if method.startswith("quant") and rate < 4:   # every row at the 8-bit cap
        return v * d * 4 / storage_bytes(np.full(v, 8, np.uint8), d, d, mean=True, rotate=True)
    return v * d * 4 / int(v * d * 4 / rate)


def rows(model, dataset, metric, original, table, tokens=None):
    """`table`: {(method, output): {rate: value}}."""
    out = [dict(model=model, dataset=dataset, metric=metric, method="original", rate=1.0,
                achieved_rate=1.0, output=None, value=original, tokens=tokens)]
    for (method, output), values in table.items():
        for rate, value in values.items():
            out.append(dict(model=model, dataset=dataset, metric=metric, method=method,
                            rate=float(rate), achieved_rate=reached(model, method, rate),
                            output=output, value=value, tokens=tokens))
    return out


def tied_and_kept(pairs: dict) -> dict:
    """{method: {rate: (tied, head kept)}} -> {(method, output): {rate: value}}."""
    out = {}
    for method, by_rate in pairs.items():
        out[(method, "tied")] = {r: t for r, (t, _) in by_rate.items()}
        out[(method, "original")] = {r: k for r, (_, k) in by_rate.items()}
    return out


FIGURES = {
    # the offline demo (`make demo`, README): one rate, so one bar per method and output
    "demo.png": rows("smollm2-135m", "stdlib/heldout", "ppl", 15.22, tied_and_kept({
        "svd": {10: (32655, 12171)}, "ae": {10: (7468, 7905)},
        "quant_gptq": {10: (15.38, 15.30)}}), 8176),
    # "Beyond the paper": SmolLM2, 4,096 tokens of WikiText-2 raw test, exact SVD rows
    "quality_smollm2.png": rows("smollm2-135m", "wikitext-2-raw/test", "ppl", 30.64, tied_and_kept({
        "svd": {2: (109757, 3741), 5: (69256, 10000), 10: (36406, 11636)},
        "ae": {2: (5528, 2625), 5: (7484, 8208), 10: (9052, 10653)},
        "quant": {2: (30.62, 30.65), 5: (30.70, 30.65), 10: (40.75, 31.29)},
        "quant_freq": {2: (30.62, 30.65), 5: (30.69, 30.66), 10: (34.32, 31.07)},
        "quant_gptq": {2: (30.65, 30.65), 5: (30.67, 30.63), 10: (32.34, 31.02)}}), 4096),
    # MiniLM-L6, STS-B dev (no LM head: one output)
    "quality_minilm.png": rows("minilm-l6", "stsb/validation", "spearman_x100", 86.73, {
        ("svd", None): {2: 85.11, 5: 77.79, 10: 71.40},
        ("ae", None): {2: 85.30, 5: 75.89, 10: 66.78},
        ("quant", None): {2: 86.73, 5: 86.73, 10: 86.73},
        ("quant_freq", None): {2: 86.73, 5: 86.72, 10: 86.71}}),
    # 2 and 1 bits per entry: SmolLM2 16,384 tokens, vq through run.py (the config's rows)
    "quality_smollm2_low.png": rows("smollm2-135m", "wikitext-2-raw/test", "ppl", 28.82, tied_and_kept({
        "svd": {16: (22532, 16673), 32: (26978, 22476)},
        "ae": {16: (6413, 12637), 32: (8893, 14234)},
        "vq": {16: (32.70, 30.31), 32: (43.35, 35.63)}}), 16384),
    "quality_gemma3_low.png": rows("gemma3-270m", "wikitext-2-raw/test", "ppl", 23.47, {
        ("svd", "tied"): {16: 4654, 32: 3858},
        ("ae", "tied"): {16: 69376, 32: 69079},
        ("vq", "tied"): {16: 25.89, 32: 31.51}}, 16384),
    "quality_minilm_low.png": rows("minilm-l6", "stsb/validation", "spearman_x100", 86.73, {
        ("svd", None): {16: 69.03, 32: 63.91},
        ("ae", None): {16: 63.65, 32: 63.19},
        ("vq", None): {16: 86.68, 32: 85.92}}),
}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for name, figure_rows in FIGURES.items():
        plot(figure_rows, out / name)
        print(out / name)
