"""Results of a work directory: `results.json` (rows), `results.md` (tables), `plot.png`.

One row schema for both jobs (`dirjax.experiment`). Every row has: key (digest of everything
that made it), job, model, task, dataset, metric, value, method ("original" for the
uncompressed model), rate (requested; 1 for the uncompressed model), achieved_rate (fp32 table
bytes / stored bytes), rank (low-rank methods only, else None), output ("tied" / "original" for
tied LM heads in eval rows, else None), embedding_bytes (stored), model_bytes (the whole model
with that embedding, fp32 elsewhere), svd_solver ("exact" / "randomized" where an SVD was
computed), method_options, seconds, compress_seconds, reused, embedding_dir. Eval rows add
tokens (and nll, examples); fine-tune rows add seed, epochs, lr, embedding (treatment),
train_loss, history.

The stored values are the record (keys and caches depend on them); what is printed names them
for a reader: the uncompressed model's row is "uncompressed", output "tied" (the compressed
table serves the input and the tied output head) stays "tied", output "original" (the head
keeps the original table) is "input only", a model path is its last component, a metric has
its plain name and its ratio (or, for higher-is-better scores, its change in points) to the
uncompressed model. `summary(rows)` (what a finished run prints) fits an 80-column terminal.

`Results` keeps the file: a row replaces only the row with its own key, so results.json only
grows and a failed or different rerun never loses a finished row. Every file is written to a
temporary file in the same folder and moved into place with `os.replace`, so a reader (or a
crash) never sees a half-written file.
"""
from __future__ import annotations

import io
import json
import math
import os
import textwrap
from pathlib import Path

from dirjax.compress import METHODS
from dirjax.errors import DataError, DirjaxError
from dirjax.fileio import atomic_write  # noqa: F401  (the writer of every results file)

UNCOMPRESSED = "original"          # the stored method of the uncompressed model's row
UNCOMPRESSED_LABEL = "uncompressed"
OUTPUT_LABELS = {"tied": "tied", "original": "input only"}   # printed names of stored outputs
LOG_METRICS = ("ppl", "mlm_ppl")   # lower is better, compared as a ratio on a log axis
# metric -> (column title, plain name); other metrics print as they are stored
METRIC_NAMES = {"ppl": ("ppl", "perplexity"), "mlm_ppl": ("MLM ppl", "masked-LM perplexity"),
                "spearman_x100": ("Spearman", "STS Spearman x100"),
                "accuracy": ("accuracy", "accuracy x100"), "f1": ("F1", "F1 x100"),
                "matthews": ("Matthews", "Matthews corr. x100"),
                "pearson": ("Pearson", "Pearson x100"), "spearman": ("Spearman", "Spearman x100"),
                "exact_match": ("EM", "exact match")}
WIDTH = 80                         # the printed tables fit a terminal this wide
DETAIL_COLUMNS = [("method", "method"), ("output", "output"), ("rate", "rate asked"),
                  ("achieved_rate", "rate reached"), ("rank", "rank"), ("seed", "seed"),
                  ("lr", "lr"), ("embedding_bytes", "table MB"),
                  ("model_bytes", "model MB"), ("mean_cosine", "mean row cos"),
                  ("svd_solver", "SVD"), ("compress_seconds", "compress s"), ("seconds", "eval s")]


# ----------------------------------------------------------------------------- names
def short_model(model) -> str:
    """A model's printed name: an alias as it is, a path or Hub id by its last part."""
    name = str(model).rstrip("/\\")
    name = name.replace("\\", "/").rsplit("/", 1)[-1] or str(model)
    return name.removesuffix(".gguf")


def method_label(r: dict) -> str:
    return UNCOMPRESSED_LABEL if r.get("method") == UNCOMPRESSED else str(r.get("method"))


def output_label(r: dict) -> str:
    out = r.get("output")
    return "-" if out is None else OUTPUT_LABELS.get(out, str(out))


def metric_title(metric: str) -> str:
    return METRIC_NAMES.get(metric, (metric, metric))[0]


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, (metric, metric))[1]


def higher_is_better(metric: str) -> bool:
    return metric not in LOG_METRICS


def points(r: dict) -> float:
    """Scale of a row's value for display: GLUE scores are fractions, shown x100."""
    return 100.0 if r.get("job") == "finetune" and r.get("task") != "squad" else 1.0


# ----------------------------------------------------------------------------- numbers
def fmt(key: str, v) -> str:
    """One cell of the details table."""
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
        if key == "achieved_rate":
            return f"{v:.2f}"
        if key == "mean_cosine":
            return f"{v:.4f}"
        if key in ("seconds", "compress_seconds"):
            return f"{v:.1f}"
        if key == "lr":
            return f"{v:g}"
        return fmt_value(v)
    return str(v)


def fmt_value(v: float) -> str:
    """A metric value: 15.22, 812.4, 32,655."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"


def fmt_ratio(x: float) -> str:
    """value / uncompressed value: 1.01x, 12.3x, 2,145x."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def compare(value: float, base: float | None, metric: str, scale: float = 1.0) -> str:
    """A value against the uncompressed model's: a ratio (perplexities) or a change in points."""
    if base is None:
        return "-"
    if higher_is_better(metric):
        return f"{scale * (value - base):+.2f}"
    return fmt_ratio(value / base) if base else "-"


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- tables
def text_table(head: list[str], body: list[list[str]], right: set[int]) -> str:
    """A markdown table padded to aligned columns (readable as it is in a terminal)."""
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" if i in right else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule] + [line(r) for r in body]) + "\n"


def _blocks(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (model, dataset, metric), in first-seen order: one table each."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r.get("model"), r.get("dataset"), r.get("metric")), []).append(r)
    return out


def _base(block: list[dict]) -> float | None:
    base = [r["value"] for r in block if r.get("method") == UNCOMPRESSED]
    return _mean(base) if base else None


def _title(model, dataset, metric, block: list[dict]) -> str:
    title = f"{short_model(model)}: {metric_name(metric)}" if model is not None \
        else metric_name(metric)
    if dataset:
        title += f" on {dataset}"
    tokens = {r.get("tokens") for r in block} - {None}
    if len(tokens) == 1 and block[0].get("job") != "finetune":
        title += f" ({tokens.pop():,} tokens)"
    return title


def eval_table(rows: list[dict]) -> str:
    """The printed results: per (model, dataset, metric) a title line and a table of method,
    output, rate asked, rate reached, the value and its ratio (or change) to the uncompressed
    model. Fits in 80 columns."""
    parts = []
    for (model, dataset, metric), block in _blocks(rows).items():
        base = _base(block)
        outputs = any(r.get("output") is not None for r in block)   # a tied head to keep
        ratio = "change" if higher_is_better(metric) else f"{metric_title(metric)} ratio"
        head = ["method", "output"][:1 + outputs] + ["rate asked", "reached",
                                                     metric_title(metric), ratio]
        body = []
        for r in block:
            reached = r.get("achieved_rate")
            body.append([method_label(r), output_label(r)][:1 + outputs] + [
                f"{r.get('rate', 1):g}", "-" if reached is None else f"{reached:.2f}",
                fmt_value(r["value"]), compare(r["value"], base, metric)])
        parts.append(_title(model, dataset, metric, block) + "\n" +
                     text_table(head, body, right=set(range(1 + outputs, len(head)))))
    return "\n".join(parts)


markdown_table = eval_table   # the name notebooks and older code call


def details_table(rows: list[dict]) -> str:
    """Every row with its bytes, rank, cosine, SVD solver and seconds (results.md; wider than a
    terminal: for a markdown viewer)."""
    cols = [(k, t) for k, t in DETAIL_COLUMNS if any(r.get(k) is not None for r in rows)]
    several = len({(r.get("model"), r.get("dataset"), r.get("metric")) for r in rows}) > 1
    if several:
        cols = [("model", "model"), ("dataset", "dataset"), ("metric", "metric")] + cols
    head = [t for _, t in cols]
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            if k == "method":
                cells.append(method_label(r))
            elif k == "output":
                cells.append(output_label(r))
            elif k == "model":
                cells.append(short_model(r.get("model")))
            else:
                cells.append(fmt(k, r.get(k)))
        body.append(cells)
    return text_table(head, body, right={i for i, (k, _) in enumerate(cols)
                                         if k not in ("model", "dataset", "metric", "method",
                                                      "output", "svd_solver")})


def seed_summary(rows: list[dict]) -> str:
    """Fine-tuning: per (model, dataset, metric) the mean ± std over seeds of each method and
    rate (and learning rate / epochs where they vary), and its change from the uncompressed
    model in points. Fits in 80 columns."""
    import numpy as np
    parts = []
    for (model, dataset, metric), block in _blocks(rows).items():
        settings = [k for k in ("lr", "epochs", "embedding")
                    if len({r.get(k) for r in block}) > 1]
        groups: dict[tuple, list[dict]] = {}
        for r in block:
            key = (method_label(r), r.get("rate", 1), r.get("rank"),
                   *(r.get(k) for k in settings))
            groups.setdefault(key, []).append(r)
        base = _mean(points(r) * r["value"] for r in block if r.get("method") == UNCOMPRESSED)
        base = None if math.isnan(base) else base
        head = ["method", "rate asked", "reached", *settings, metric_title(metric),
                "seeds", "change"]
        body = []
        for (method, rate, _, *vals), rs in groups.items():
            v = [points(r) * r["value"] for r in rs]
            std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            reached = _mean(r.get("achieved_rate") for r in rs)
            body.append([method, f"{rate:g}", "-" if math.isnan(reached) else f"{reached:.2f}",
                         *(f"{x:g}" if isinstance(x, float) else str(x) for x in vals),
                         f"{np.mean(v):.1f} ± {std:.1f}", str(len(v)),
                         "-" if base is None else f"{np.mean(v) - base:+.1f}"])
        title = _title(model, dataset, metric, block) + " (mean ± std over seeds, points)"
        parts.append(title + "\n" + text_table(head, body, right=set(range(1, len(head)))))
    return "\n".join(parts).rstrip("\n")


def _low_rank(method: str) -> bool:
    return method in METHODS and METHODS[method].low_rank


def verdict(rows: list[dict]) -> str:
    """Plain words under the table: per rate, the best method against the uncompressed model,
    and whether low rank alone keeps the model (perplexity within 1.5x, STS within 2 points).
    Lines wrap at 80 columns."""
    lines = []
    blocks = _blocks(rows)
    for (model, dataset, metric), block in blocks.items():
        base = _base(block)
        if base is None:
            continue
        higher = higher_is_better(metric)
        def worse(v):   # how far from the uncompressed model: a ratio, or points for scores
            return base - v if higher else v / base
        def kept(v):
            return worse(v) <= (2.0 if higher else 1.5)
        def show(r):
            how = (f"{r['value'] - base:+.2f} points" if higher
                   else f"{metric_title(metric)} ratio {fmt_ratio(r['value'] / base)}")
            out = f" ({output_label(r)})" if r.get("output") else ""
            return f"{r['method']}{out} {fmt_value(r['value'])} ({how})"
        where = f"{short_model(model)}, {metric_name(metric)}: " if len(blocks) > 1 else ""
        for rate in sorted({r["rate"] for r in block if r["method"] != UNCOMPRESSED}):
            at = [r for r in block if r["rate"] == rate and r["method"] != UNCOMPRESSED
                  and math.isfinite(r["value"])]       # a diverged run is in the table only
            if not at:
                continue
            best = max(at, key=lambda r: r["value"] if higher else -r["value"])
            line = f"{where}rate {rate:g}: best {show(best)}"
            low = [r for r in at if _low_rank(r["method"])]
            if low and not any(kept(r["value"]) for r in low):
                lr = max(low, key=lambda r: r["value"] if higher else -r["value"])
                line += f"; low rank alone does not keep this model (best {show(lr)})"
                # scalar codes need over 1 bit per entry plus their scales: quant_gptq holds
                # at rate 16 (2 bits), and nothing but vq goes further
                if not kept(best["value"]):
                    line += ("; try methods quant_gptq / vq (`dirjax configs quality_sweep`)"
                             if rate <= 16 else "; try method vq (`dirjax configs quality_sweep`)")
            lines.append(textwrap.fill(line, WIDTH, subsequent_indent="  ",
                                       break_on_hyphens=False))
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """What a finished run prints (80 columns): the tables and the verdict (eval), the seed
    summary (finetune)."""
    if any(r.get("job") == "finetune" for r in rows):
        return seed_summary([r for r in rows if r.get("job") == "finetune"])
    words = verdict(rows)
    return (eval_table(rows) + ("\n" + words if words else "")).rstrip("\n")


def results_markdown(rows: list[dict]) -> str:
    """results.md: the printed summary, then every row's details."""
    words = textwrap.fill(
        "Rate: fp32 table bytes / stored bytes (asked, and reached by the stored codes). "
        "table MB: the stored embedding; model MB: the whole model with it (fp32 elsewhere); "
        "mean row cos: mean cosine of the reconstructed rows to the original ones; seconds "
        "on the machine that ran it.", WIDTH)
    return summary(rows) + "\n\n## Details\n\n" + words + "\n\n" + details_table(rows)


# ----------------------------------------------------------------------------- plots
STYLES = [("tab:blue", "o"), ("tab:orange", "s"), ("tab:green", "^"), ("tab:red", "D"),
          ("tab:purple", "v"), ("tab:brown", "P"), ("tab:pink", "X"), ("tab:olive", "*"),
          ("tab:cyan", "h"), ("tab:gray", "<")]
LINES = {"tied": "-", "original": "--", None: "-"}
NICE_RATES = (1, 1.5, 2, 3, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 256)
CLOSE = 2.0          # a close-up panel shows the series within this ratio ...
FAR = 10.0           # ... when others are beyond this one (they would flatten it to a line)


def _panel(r: dict) -> tuple:
    """One panel per model, dataset and metric: each has one uncompressed model to compare to."""
    return (r.get("model"), r.get("dataset"), r.get("metric"))


def _series_label(method: str, output) -> str:
    return method if output is None else f"{method}, {OUTPUT_LABELS.get(output, output)}"


def _times(v, _=None) -> str:
    """An axis tick of a ratio: 0.95x, 1x, 1.2x, 1,000x."""
    return f"{v:,.0f}x" if v >= 10 else f"{v:.3g}x"


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Ratio ticks on a log axis: 1x, 2x, 5x, 10x ... where it spans under 3 decades (so a
    short range still has labels), decades beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    subs = (1.0, 2.0, 5.0) if hi / lo < 1000 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_times))
    axis.set_minor_formatter(NullFormatter())


def _y(metric: str, value: float, base: float | None, scale: float) -> float:
    if base is None:
        return scale * value
    return scale * (value - base) if higher_is_better(metric) else value / base


def _ylabel(metric: str, base: float | None, scale: float) -> str:
    name = metric_name(metric)
    if base is None:
        return name
    if higher_is_better(metric):
        return f"{name}: change from the uncompressed\nmodel's {fmt_value(scale * base)} (points)"
    return f"{name}, compressed / uncompressed\n(1x = no loss)"


def _dodge(pts: list[tuple], logy: bool, xspan: float, yspan: float,
           step: float = 0.03) -> dict:
    """Sideways shifts (in log10 x) so that points of different series that would overlap do
    not: points within ~2.5% of the axes of each other form a cluster, spread `step` of the x
    span apart around their true position. `pts`: (id, x, y) with x > 0."""
    def norm(x, y):
        return (math.log10(x) / xspan, (math.log10(y) if logy and y > 0 else y) / yspan)
    coords = [norm(x, y) for _, x, y in pts]
    parent = list(range(len(pts)))
    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i in range(len(pts)):
        for j in range(i):
            if abs(coords[i][0] - coords[j][0]) < 0.025 and abs(coords[i][1] - coords[j][1]) < 0.03:
                parent[find(i)] = find(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(pts)):
        clusters.setdefault(find(i), []).append(i)
    shift = {}
    for members in clusters.values():
        for k, i in enumerate(members):
            shift[pts[i][0]] = (k - (len(members) - 1) / 2) * step * xspan
    return shift


def _series(block: list[dict], metric: str, base, scale: float) -> list[tuple]:
    """[((method, output), [(rate reached, y), ...])], seeds averaged, by rate asked."""
    series: dict[tuple, dict[float, list[dict]]] = {}
    for r in block:
        if r.get("method") != UNCOMPRESSED:
            key = (r["method"], r.get("output"))
            series.setdefault(key, {}).setdefault(r["rate"], []).append(r)
    out = []
    for key, by_rate in series.items():
        pts = [(_mean(r.get("achieved_rate") or r["rate"] for r in rs),
                _y(metric, _mean(r["value"] for r in rs), base, scale))
               for _, rs in sorted(by_rate.items())]
        pts = [(x, y) for x, y in pts if math.isfinite(x) and x > 0 and math.isfinite(y)
               and (y > 0 or higher_is_better(metric) or base is None)]   # a diverged run: left out
        if pts:
            out.append((key, pts))
    return out


def _lines(ax, lines: list[tuple], logy: bool, ref: float | None, styles: dict,
           base_label: str) -> bool:
    """Draw `lines` (from `_series`) against the rate reached, the uncompressed model as a
    dotted line at `ref` (1x, 0 points; None: none); returns whether any point was moved
    sideways."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts] + ([] if ref is None else [ref])
    xspan = max(math.log10(max(xs) / min(xs)), 0.3)
    yl = [math.log10(y) for y in ys if y > 0] if logy else ys
    yspan = max(max(yl) - min(yl), 1e-9)
    flat = [((i, j), x, y) for i, (_, pts) in enumerate(lines) for j, (x, y) in enumerate(pts)]
    shift = _dodge(flat, logy, xspan, yspan)
    if ref is not None:
        ax.axhline(ref, color="black", ls=":", lw=1.2, label=base_label)
    for i, ((method, output), pts) in enumerate(lines):
        color, marker = styles[method]
        x = [px * 10 ** shift[(i, j)] for j, (px, _) in enumerate(pts)]
        ax.plot(x, [py for _, py in pts], color=color, marker=marker, ms=7, lw=1.6,
                ls=LINES.get(output, "-"), mfc=color if output != "original" else "white",
                mew=1.6, label=_series_label(method, output))
    ax.set_xscale("log")
    lo, hi = min(xs) / 10 ** (0.08 * xspan), max(xs) * 10 ** (0.08 * xspan)
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator([t for t in NICE_RATES if lo <= t <= hi]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("compression rate reached (fp32 table bytes / stored bytes)")
    ax.grid(alpha=0.3, which="major")
    return any(abs(s) > 0 for s in shift.values())


def _close(lines: list[tuple], logy: bool) -> list[tuple]:
    """The series for a close-up (within CLOSE) when others lie beyond FAR; else []."""
    if not logy or not lines or max(y for _, pts in lines for _, y in pts) <= FAR:
        return []
    return [s for s in lines if max(y for _, y in s[1]) <= CLOSE]


def _line_panel(sub, block: list[dict], metric: str, base, scale: float, styles: dict,
                title: str) -> bool:
    """Several rates asked: the metric against the rate reached, one line per (method, output);
    a close-up beside it when some series sit within 2x and others beyond 10x."""
    from matplotlib.ticker import FuncFormatter
    lines = _series(block, metric, base, scale)
    if not lines:
        ax = sub.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{title}\nno finite results", ha="center", va="center")
        return False
    logy = base is not None and not higher_is_better(metric)
    close = _close(lines, logy)
    zoom = bool(close)
    axes = sub.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    base_label = "uncompressed" if base is None else \
        f"uncompressed ({metric_title(metric)} {fmt_value(scale * base)})"
    ref = None if base is None else 1.0 if logy else 0.0
    moved = _lines(axes[0], lines, logy, ref, styles, base_label)
    axes[0].set_ylabel(_ylabel(metric, base, scale) + ("; log scale" if logy else ""))
    if logy:
        axes[0].set_yscale("log")
        _log_ticks(axes[0].yaxis, *axes[0].get_ylim())
    if zoom:
        axes[0].set_title("all methods", fontsize=9.5)
        moved |= _lines(axes[1], close, False, 1.0, styles, base_label)
        axes[1].set_title(f"close-up: the methods within {CLOSE:g}x", fontsize=9.5)
        top = max(y for _, pts in close for _, y in pts)
        low = min([1.0] + [y for _, pts in close for _, y in pts])
        pad = (top - low) * 0.08 or 0.02
        axes[1].set_ylim(low - pad, top + pad)
        ticks = [t for t in axes[1].get_yticks() if low - pad <= t <= top + pad]
        digits = next(n for n in range(2, 7)      # as many decimals as tell the ticks apart
                      if len({f"{t:.{n}f}" for t in ticks}) == len(ticks) or n == 6)
        axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.{digits}f}x"))
    handles, labels = axes[0].get_legend_handles_labels()
    sub.legend(handles, labels, loc="outside lower center", ncol=4 if zoom else 3,
               fontsize=8.5, frameon=False)
    sub.suptitle(title, fontsize=10.5)
    return moved


def _bar_panel(sub, block: list[dict], metric: str, base, scale: float, styles: dict,
               title: str) -> None:
    """One rate asked: a horizontal bar per (method, output), from 1x (or 0 points), best on
    top, annotated with the value."""
    ax = sub.subplots()
    groups: dict[tuple, list[dict]] = {}
    for r in block:
        if r.get("method") != UNCOMPRESSED:
            groups.setdefault((r["method"], r.get("output")), []).append(r)
    bars = []
    for (method, output), rs in groups.items():
        value = _mean(r["value"] for r in rs)
        reached = _mean(r.get("achieved_rate") or r["rate"] for r in rs)
        v = _y(metric, value, base, scale)
        if math.isfinite(v) and (v > 0 or higher_is_better(metric) or base is None):
            bars.append((method, output, value, reached, v))    # a diverged run: left out
    higher = higher_is_better(metric)
    bars.sort(key=lambda b: b[4] if higher else -b[4])   # barh draws bottom-up: best on top
    logx = base is not None and not higher
    origin = 1.0 if logx else 0.0
    for y, (method, output, value, reached, v) in enumerate(bars):
        color, _ = styles[method]
        ax.barh(y, v - origin, left=origin, height=0.62, color=color,
                alpha=1.0 if output != "original" else 0.45, edgecolor=color,
                hatch=None if output != "original" else "//")
        ax.plot([v], [y], marker="|", ms=16, mew=2.5, color=color)   # seen even at ~1x
        shown = f"{metric_title(metric)} {fmt_value(scale * value)}"
        text = (f"{fmt_ratio(v)}  ({shown})" if logx
                else f"{v:+.2f} points  ({shown})" if base is not None else shown)
        # right of the bar's end, or of the baseline for a bar going left (not over the labels)
        ax.annotate(text, (max(v, origin), y), xytext=(6, 0), textcoords="offset points",
                    va="center", ha="left", fontsize=9)
    ax.set_yticks(range(len(bars)),
                  [f"{_series_label(m, o)}\n(rate reached {rr:.2f}x)" for m, o, _, rr, _ in bars],
                  fontsize=9)
    vals = [b[4] for b in bars] + [origin]
    if logx:
        ax.set_xscale("log")
        ax.set_xlim(min(vals) / 1.15, max(vals) * 12)
        _log_ticks(ax.xaxis, min(vals) / 1.15, max(vals) * 12)
    else:
        lo, hi = min(vals), max(vals)
        span = hi - lo or 1.0
        ax.set_xlim(lo - 0.05 * span, hi + 0.9 * span)   # room for the labels on the right
    if base is not None:
        ax.axvline(origin, color="black", lw=1)
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.set_xlabel(_ylabel(metric, base, scale).replace("\n", " ") + ("; log scale" if logx else ""))
    ax.grid(alpha=0.3, axis="x", which="major")
    sub.suptitle(title, fontsize=10.5)


def plot(rows: list[dict], path: str | os.PathLike) -> None:
    """One panel per (model, dataset, metric). Several rates asked: the metric as a ratio to
    the uncompressed model (perplexities, log axis) or its change in points (scores) against
    the compression rate reached, one line per (method, output) with its own colour, marker
    and line style, coincident points spread sideways, the legend below, and a close-up when
    the good methods would be flattened by the bad. One rate asked: a horizontal bar per
    (method, output) from 1x, annotated. Rows that differ only by seed are averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        panels.setdefault(_panel(r), []).append(r)
    methods = list(dict.fromkeys(r["method"] for r in rows if r.get("method") != UNCOMPRESSED))
    styles = {m: STYLES[i % len(STYLES)] for i, m in enumerate(methods)}
    shapes = []   # (kind, width, height) of each panel
    for block in panels.values():
        rates = {r["rate"] for r in block if r.get("method") != UNCOMPRESSED}
        n = len({(r["method"], r.get("output")) for r in block if r.get("method") != UNCOMPRESSED})
        if len(rates) > 1:
            base, metric = _base(block), block[0].get("metric")
            zoom = _close(_series(block, metric, base, points(block[0])),
                          base is not None and not higher_is_better(metric))
            shapes.append(("line", 12.0 if zoom else 7.5,
                           5.0 + 0.22 * math.ceil((n + 1) / (4 if zoom else 3))))
        elif rates:
            shapes.append(("bar", 8.0, 1.4 + 0.6 * n))
        else:
            shapes.append(("empty", 6.0, 1.0))
    if not panels:
        shapes = [("empty", 6.0, 2.0)]
    width = max(w for _, w, _ in shapes)
    fig = plt.figure(figsize=(width, sum(h for _, _, h in shapes)), layout="constrained")
    subs = fig.subfigures(len(shapes), 1, squeeze=False, height_ratios=[h for *_, h in shapes])
    moved = False
    if not panels:
        ax = subs[0][0].subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center")
    for sub, (kind, *_), ((model, dataset, metric), block) in zip(subs[:, 0], shapes,
                                                                   panels.items()):
        base = _base(block)
        scale = points(block[0])
        title = _title(model, dataset, metric, block)
        if kind == "line":
            moved |= _line_panel(sub, block, metric, base, scale, styles, title)
        elif kind == "bar":
            asked = next(r["rate"] for r in block if r.get("method") != UNCOMPRESSED)
            title += f"\nembedding compressed {asked:g}x (asked)"
            if base is not None:
                title += f"; uncompressed model: {metric_title(metric)} {fmt_value(scale * base)}"
            _bar_panel(sub, block, metric, base, scale, styles, title)
        else:
            ax = sub.subplots()
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{title}\nonly the uncompressed model so far"
                    + (f": {fmt_value(scale * base)}" if base is not None else ""),
                    ha="center", va="center", transform=ax.transAxes)
    if moved:
        fig.text(0.995, 0.002, "points that would overlap are spread sideways a little",
                 ha="right", va="bottom", fontsize=7, color="0.4")
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write(path, png.getvalue())


# ----------------------------------------------------------------------------- the files
def write_results(rows: list[dict], workdir: str | os.PathLike) -> None:
    """results.json, results.md and plot.png in `workdir`, each replaced atomically (the JSON
    first: it is the record; the tables and the plot are views of it)."""
    workdir = Path(workdir)
    atomic_write(workdir / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write(workdir / "results.md", results_markdown(rows))
    plot(rows, workdir / "plot.png")


def read_results(workdir: str | os.PathLike) -> list[dict]:
    return json.loads((Path(workdir) / "results.json").read_text())


class Results:
    """The rows of `<workdir>/results.json`, by key; `put` replaces a row with the same key or
    appends, and rewrites the files. Rows are never dropped."""

    def __init__(self, workdir: str | os.PathLike):
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
