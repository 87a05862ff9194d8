"""Results of a work directory: `results.json` (rows), `results.md` (table), `plot.png`.

One row schema for both jobs (`dirjax.experiment`). Every row has: key (digest of everything
that made it), job, model, task, dataset, metric, value, method, rate (requested; 1 for the
original), achieved_rate (fp32 table bytes / stored bytes), rank (low-rank methods only, else
None), output ("tied" / "original" for tied LM heads in eval rows, else None), embedding_bytes
(stored), model_bytes (the whole model with that embedding, fp32 elsewhere), svd_solver
("exact" / "randomized" where an SVD was computed), method_options, seconds, compress_seconds,
reused, embedding_dir. Eval rows add tokens (and nll, examples); fine-tune rows add seed,
epochs, lr, embedding (treatment), train_loss, history.

`Results` keeps the file: a row replaces only the row with its own key, so results.json only
grows and a failed or different rerun never loses a finished row. Every file is written to a
temporary file in the same folder and moved into place with `os.replace`, so a reader (or a
crash) never sees a half-written file.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

from dirjax.fileio import atomic_write  # noqa: F401  (the writer of every results file)

COLUMNS = [("model", "model"), ("method", "method"), ("output", "output"), ("rate", "rate"),
           ("rank", "rank"), ("dataset", "dataset"), ("metric", "metric"), ("value", "value"),
           ("seed", "seed"), ("lr", "lr"), ("tokens", "tokens"),
           ("embedding_bytes", "emb. MB"), ("model_bytes", "model MB"),
           ("achieved_rate", "rate in bytes"), ("svd_solver", "svd"),
           ("mean_cosine", "mean cos"), ("compress_seconds", "compress s"), ("seconds", "s")]
LOG_METRICS = ("ppl", "mlm_ppl")
OUTPUT_LABELS = {"tied": " (input + tied head)", "original": " (input only, head kept)"}


def fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if key in ("embedding_bytes", "model_bytes"):
        return f"{v / 1e6:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if key == "rate":
            return f"{v:.3g}"
        if key == "mean_cosine":
            return f"{v:.4f}"
        if key in ("seconds", "compress_seconds"):
            return f"{v:.1f}"
        if key == "lr":
            return f"{v:g}"
        return f"{v:,.2f}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub markdown table of `rows`, the columns that any row has."""
    cols = [(k, title) for k, title in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(t for _, t in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _panel(r: dict) -> str:
    """One plot panel per metric (eval) or per dataset and metric (fine-tuning: several tasks)."""
    return f"{r['dataset']} {r['metric']}" if r.get("job") == "finetune" else r["metric"]


def plot(rows: list[dict], path: str | os.PathLike) -> None:
    """Metric vs rate, one line per (method, output), the original model as a horizontal line;
    rows that differ only by seed are averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(_panel(r) for r in rows)) or ["(no results yet)"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        mine = [r for r in rows if _panel(r) == panel]
        points: dict[tuple, list] = {}
        for r in mine:
            label = r["method"] + OUTPUT_LABELS.get(r.get("output"), "")
            points.setdefault((label, r["rate"]), []).append(r["value"])
        lines: dict[str, list] = {}
        for (label, rate), values in points.items():
            value = sum(values) / len(values)
            if label == "original":
                ax.axhline(value, color="black", ls="--", lw=1, label=f"original {value:.4g}")
            else:
                lines.setdefault(label, []).append((rate, value))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if mine and mine[0]["metric"] in LOG_METRICS:
            ax.set_yscale("log")
        models = ", ".join(dict.fromkeys(str(r["model"]) for r in mine))
        datasets = ", ".join(dict.fromkeys(str(r["dataset"]) for r in mine))
        ax.set(xlabel="compression rate (fp32 table bytes / stored bytes)",
               ylabel=mine[0]["metric"] if mine else "", title=f"{models} on {datasets}")
        ax.grid(alpha=0.3, which="both")
        if mine:
            ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write(path, png.getvalue())


HIGHER_IS_BETTER = ("spearman_x100",)


def _low_rank(method: str) -> bool:
    from dirjax.compress import METHODS
    return method in METHODS and METHODS[method].low_rank


def verdict(rows: list[dict]) -> str:
    """Plain words under the table: per rate, the best method against the original model, and
    whether low rank alone keeps the model (perplexity within 1.5x, STS within 2 points)."""
    originals = {r["metric"]: r["value"] for r in rows if r["method"] == "original"}
    lines = []
    for metric, base in originals.items():
        higher = metric in HIGHER_IS_BETTER
        def worse(v):   # how far from the original: a ratio for perplexities, points for STS
            return base - v if higher else v / base
        def kept(v):
            return worse(v) <= (2.0 if higher else 1.5)
        def show(r):
            how = (f"{r['value'] - base:+.2f} points" if higher
                   else f"{r['value'] / base:.2f}x the original")
            return f"{r['method']}{' (' + r['output'] + ')' if r.get('output') else ''} " \
                   f"{fmt('value', r['value'])} ({how})"
        for rate in sorted({r["rate"] for r in rows if r["method"] != "original"}):
            at = [r for r in rows if r["metric"] == metric and r["rate"] == rate
                  and r["method"] != "original"]
            if not at:
                continue
            best = max(at, key=lambda r: r["value"] if higher else -r["value"])
            line = f"rate {rate:g}: best {show(best)}"
            low = [r for r in at if _low_rank(r["method"])]
            if low and not any(kept(r["value"]) for r in low):
                lr = max(low, key=lambda r: r["value"] if higher else -r["value"])
                line += f"; low rank alone does not keep this model (best {show(lr)})"
                # scalar codes need over 1 bit per entry plus their scales: quant_gptq holds
                # at rate 16 (2 bits), and nothing but vq goes further
                if not kept(best["value"]):
                    line += ("; try methods quant_gptq / vq (configs/quality_sweep.py)"
                             if rate <= 16 else "; try method vq (configs/quality_sweep.py)")
            lines.append(line)
    return "\n".join(lines)


def write_results(rows: list[dict], workdir: str | os.PathLike) -> None:
    """results.json, results.md and plot.png in `workdir`, each replaced atomically (the JSON
    first: it is the record; the table and the plot are views of it)."""
    workdir = Path(workdir)
    atomic_write(workdir / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write(workdir / "results.md", markdown_table(rows))
    plot(rows, workdir / "plot.png")


def read_results(workdir: str | os.PathLike) -> list[dict]:
    return json.loads((Path(workdir) / "results.json").read_text())


class Results:
    """The rows of `<workdir>/results.json`, by key; `put` replaces a row with the same key or
    appends, and rewrites the files. Rows are never dropped."""

    def __init__(self, workdir: str | os.PathLike):
        from dirjax.errors import DataError
        self.workdir = Path(workdir)
        path = self.workdir / "results.json"
        self.rows: list[dict] = []
        if path.exists():
            try:
                rows = json.loads(path.read_text())
            except ValueError as e:
                raise DataError(f"{path} is not valid JSON ({e}); move it away to start "
                                "a fresh results file") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{path} is not a list of result rows; move it away")
            self.rows = rows

    def get(self, key: str) -> dict | None:
        return next((r for r in self.rows if r.get("key") == key), None)

    def put(self, row: dict) -> None:
        from dirjax.errors import DirjaxError
        at = next((i for i, r in enumerate(self.rows) if r.get("key") == row["key"]), None)
        if at is None:
            self.rows.append(row)
        else:
            self.rows[at] = row
        try:
            write_results(self.rows, self.workdir)
        except OSError as e:
            raise DirjaxError(f"cannot write the results in {self.workdir}: "
                              f"{e.strerror or e}") from None


def seed_summary(rows: list[dict]) -> str:
    """Markdown: mean ± std over seeds of each (dataset, metric, method, rate, settings)."""
    import numpy as np
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["dataset"], r["metric"], r["method"], r["rate"], r.get("rank"), r.get("lr"),
               r.get("epochs"))
        scale = 1 if r["task"] == "squad" else 100
        groups.setdefault(key, []).append(scale * r["value"])
    lines = ["| dataset | metric | method | rate | rank | lr | epochs | mean | std | seeds | values |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, metric, method, rate, rank, lr, epochs), v in groups.items():
        std = np.std(v, ddof=1) if len(v) > 1 else 0.0
        lines.append(f"| {ds} | {metric} | {method} | {rate:g} | {rank or '-'} | {lr:g} | "
                     f"{epochs} | {np.mean(v):.2f} | {std:.2f} | {len(v)} | "
                     f"{', '.join(f'{x:.1f}' for x in v)} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> str:
    """What a finished run prints: the table and the verdict (eval), the seed summary (finetune)."""
    if any(r.get("job") == "finetune" for r in rows):
        return seed_summary([r for r in rows if r.get("job") == "finetune"])
    return markdown_table(rows) + verdict(rows)
