"""Peak memory of Gemma 3 270M perplexity: chunked vocabulary scoring vs full logits.

    .venv/bin/python bench/score_memory.py [--tokens 2048] [--window 512] [--batch 4]
                                           [--chunk 8192] [--data-dir ../shared/data]

Gemma 3 270M (offline GGUF, fp32) scores the first `--tokens` tokens of WikiText-2 raw test in
windows of [BOS] + `--window` tokens, `--batch` windows per jit call, three ways, each in its
own fresh subprocess so that one cannot inherit another's peak:

    load     load the model and tokenizer only (the baseline every run pays)
    chunked  causal_perplexity(..., chunk=--chunk): a running log-sum-exp over vocabulary
             slices (`dirjax.evaluate.scoring`), never [B, T, V] logits
    full     causal_perplexity(..., chunk=None): the [B, T, V] fp32 logits (4 x 513 x 262,144
             x 4 B = 2.15 GB per batch) and their log-sum-exp

The figure is the child's peak resident set (`ru_maxrss` of that child, from `os.wait4`).
Loading the GGUF peaks above the loaded model, so the scoring children reset their peak after
loading (`/proc/self/clear_refs` 5): their figure is the peak of scoring, the resident model
included. Prints one row per way: peak RSS, its excess over the resident model, perplexity and
wall time (both scoring paths must give the same perplexity). Memory, not speed: a loaded
machine moves the seconds, not the peaks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = ("load", "chunked", "full")
GIB = 2 ** 30


def vm_kib(field: str) -> int:
    """A `VmRSS` / `VmHWM` figure of this process, KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return vm_kib("VmHWM") <= vm_kib("VmRSS") + 1024


def child(args) -> dict:
    """Run one way in this process; return what the parent prints beside the peak."""
    from dirjax import runtime
    runtime.setup()
    from dirjax import load_model
    from dirjax.data import load_text
    from dirjax.evaluate import causal_perplexity, tokenize_stream
    from dirjax.evaluate.perplexity import bos_of

    start = time.perf_counter()
    model, tokenizer = load_model("gemma3-270m")
    out = {"load_s": time.perf_counter() - start, "vocab": model.config.vocab_size}
    if args.child == "load":
        return out
    ids = tokenize_stream(tokenizer, load_text("wikitext-2-raw", "test", args.data_dir),
                          args.tokens)
    bos = bos_of(tokenizer)
    assert bos is not None, "Gemma's tokenizer adds a BOS"
    out["resident"] = vm_kib("VmRSS") * 1024
    # loading (GGUF dequantisation) peaks above what scoring needs: reset the peak, so that
    # the child's ru_maxrss is the peak of scoring alone (the model resident included)
    out["reset"] = reset_peak()
    start = time.perf_counter()
    got = causal_perplexity(model, ids, max_length=args.window, batch_size=args.batch,
                            chunk=args.chunk if args.child == "chunked" else None,
                            bos_id=bos, progress=False)
    return {**out, "ppl": got["ppl"], "tokens": got["tokens"],
            "score_s": time.perf_counter() - start, "hwm": vm_kib("VmHWM") * 1024}


def measure(mode: str, args) -> dict:
    """Run `mode` in a fresh subprocess; its result with its peak RSS in bytes."""
    cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens),
           "--window", str(args.window), "--batch", str(args.batch), "--chunk", str(args.chunk),
           "--data-dir", str(args.data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)     # this child's own rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{mode} failed with exit status {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak": usage.ru_maxrss * 1024}   # Linux: KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("DIRJAX_DATA_DIR")
        or Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    rows = {mode: measure(mode, args) for mode in MODES}
    v = rows["load"]["vocab"]
    logits = args.batch * (args.window + 1) * v * 4
    print(f"Gemma 3 270M fp32, {args.tokens} tokens of WikiText-2 raw test, [BOS] + "
          f"{args.window}-token windows, batch {args.batch}; full logits of one batch: "
          f"{logits / GIB:.2f} GiB; chunk {args.chunk} rows: "
          f"{args.batch * (args.window + 1) * args.chunk * 4 / GIB:.3f} GiB per slice")
    print(f"| {'what':<38} | peak RSS  | over resident model | ppl    | seconds |")
    print(f"|{'-' * 40}|-----------|---------------------|--------|---------|")
    resident = rows["chunked"]["resident"]
    names = {"load": "load model and tokenizer (peak)",
             "chunked": f"perplexity, chunk={args.chunk} (default)",
             "full": "perplexity, chunk=None (full logits)"}
    print(f"| {'model resident after load':<38} | {resident / GIB:5.2f} GiB | {0:+15.2f} GiB |"
          f"      - |       - |")
    for mode, r in rows.items():
        ppl = f"{r['ppl']:.3f}" if "ppl" in r else "-"
        secs = f"{r['score_s']:.1f}" if "score_s" in r else f"{r['load_s']:.1f}"
        print(f"| {names[mode]:<38} | {r['peak'] / GIB:5.2f} GiB | "
              f"{(r['peak'] - resident) / GIB:+15.2f} GiB | {ppl:>6} | {secs:>7} |")
    if not (rows["chunked"]["reset"] and rows["full"]["reset"]):
        print("note: the peak could not be reset after loading (no /proc/self/clear_refs): "
              "the scoring rows include the load peak")
    chunked, full = (rows[m]["peak"] - resident for m in ("chunked", "full"))
    print(f"scoring above the resident model: full logits {full / GIB:.2f} GiB, chunked "
          f"{chunked / GIB:.2f} GiB ({full / max(chunked, 1):.1f}x); peaks full / chunked "
          f"{rows['full']['peak'] / rows['chunked']['peak']:.2f}x")


if __name__ == "__main__":
    main()
