"""Results of a run: `results.json` (rows), `results.md` (table), `plot.png` (metric vs rate).

A row is a dict with at least: model, method, rate, rank, output, dataset, metric, value,
tokens, embedding_params, seconds. The original model's row has method "original", rate 1 and
output None; it is drawn as a horizontal line. Every file is written to a temporary file in
the same folder and moved into place with `os.replace`, so a reader (or a crash) never sees a
half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

COLUMNS = [("model", "model"), ("method", "method"), ("output", "output"), ("rate", "rate"),
           ("rank", "rank"), ("dataset", "dataset"), ("metric", "metric"), ("value", "value"),
           ("tokens", "tokens"), ("embedding_params", "emb. params"),
           ("achieved_rate", "rate in bytes"),
           ("mean_cosine", "mean cos"), ("seconds", "eval s")]
LOG_METRICS = ("ppl", "mlm_ppl")
OUTPUT_LABELS = {"tied": " (input + tied head)", "original": " (input only, head kept)"}


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if key == "rate":
            return f"{v:.3g}"
        if key == "mean_cosine":
            return f"{v:.4f}"
        if key == "seconds":
            return f"{v:.1f}"
        return f"{v:,.2f}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub markdown table of `rows`, the columns that any row has."""
    cols = [(k, title) for k, title in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(t for _, t in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | os.PathLike) -> None:
    """Metric vs rate, one line per (method, output), the original model as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric]
        for r in mine:
            if r["method"] == "original":
                ax.axhline(r["value"], color="black", ls="--", lw=1, label=f"original {r['value']:.4g}")
        lines: dict[str, list] = {}
        for r in mine:
            if r["method"] != "original":
                label = r["method"] + OUTPUT_LABELS.get(r.get("output"), "")
                lines.setdefault(label, []).append((r["rate"], r["value"]))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if metric in LOG_METRICS:
            ax.set_yscale("log")
        models = ", ".join(dict.fromkeys(str(r["model"]) for r in mine))
        datasets = ", ".join(dict.fromkeys(str(r["dataset"]) for r in mine))
        ax.set(xlabel="compression rate (fp32 table bytes / stored bytes)", ylabel=metric,
               title=f"{models} on {datasets}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


LOW_RANK = ("svd", "ae")
HIGHER_IS_BETTER = ("spearman_x100",)


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
            low = [r for r in at if r["method"] in LOW_RANK]
            if low and not any(kept(r["value"]) for r in low):
                lr = max(low, key=lambda r: r["value"] if higher else -r["value"])
                line += f"; low rank alone does not keep this model (best {show(lr)})"
                if not kept(best["value"]):
                    line += ("; try methods quant_freq / quant_gptq (configs/quality_sweep.py)")
            lines.append(line)
    return "\n".join(lines)


def write_results(rows: list[dict], workdir: str | os.PathLike) -> None:
    """results.json, results.md and plot.png in `workdir`, each replaced atomically."""
    workdir = Path(workdir)
    atomic_write(workdir / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write(workdir / "results.md", markdown_table(rows))
    plot(rows, workdir / "plot.png")


def read_results(workdir: str | os.PathLike) -> list[dict]:
    return json.loads((Path(workdir) / "results.json").read_text())
