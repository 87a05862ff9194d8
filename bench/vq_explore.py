"""Exploration harness for the vector quantiser (SmolLM2-135M at rate 16 and 32): vector codes
vs scalar.

Prints a table: preset, target rate, rate in stored bytes against the fp32 table, perplexity
on the first N tokens of WikiText-2 raw test with the input AND the tied head replaced
("tied"), with the input only ("orig head", --orig), relative reconstruction error, seconds
spent compressing, rows per tier. Calibration (token counts, 8,192 final hidden states of the
original model) comes from WikiText-2 *valid* (tokenised), disjoint from the scored test text,
and is cached under --cache. Windows of 512, no BOS (as configs/smollm2_wikitext.py).

    .venv/bin/python bench/vq_explore.py --data ../shared/data --tokens 4096 \
        --presets vq,vq_plain,quant_gptq --rates 16,32
    .venv/bin/python bench/vq_explore.py --list

Measured (shared, heavily loaded 2-core CPU; compression seconds under that load), tied ppl,
4,096 tokens (original 30.64), rate 16 / rate 32 (quant_gptq 40.41 / refused below 1 bit):
    vq_norm (no hidden) 44.83 / 141.67    vq_h05 36.78 / 59.97     vq_h09 35.97 / 56.47
    vq_plain_h09 36.82 / 56.50            vq_h09_hls 36.38 / 56.76  vq_ls 36.89 / -
    vq_h09_r2 35.46 / 55.88               vq_h09_f025 - / 53.63     vq_h09_f01 - / 56.21
    vq_fine_h09 35.84 (orig head 32.34, 1,192 s to compress) / -
16,384 tokens (original 28.82), `--presets vq --rates 16` (and 32) `--tokens 16384 --orig`:
    without refinement (refine_steps=0, now preset vq_norefine):
    rate 16: tied 33.68 (1.17x), original head 30.45 (1.06x), 465 s
    rate 32: tied 48.08 (1.67x), original head 34.79 (1.21x), 403 s
    vq (60 refinement steps, the default):
    rate 16: tied 33.07 (1.15x), original head 30.46 (1.06x), 460 s
    rate 32: tied 42.52 (1.48x), original head 34.68 (1.20x), 439 s
4,096 tokens, rate 32, one compression scored before/after refinement: 50.86 -> 44.47.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

# name -> (function name in dirjax.compress.{vq,quantize}, options); counts/hidden passed when
# the preset says so.
FINE = ((16, 8), (8, 8), (8, 12), (4, 8), (4, 12), (2, 8))   # 0.5 1 1.5 2 3 4 bits/entry
FIRST = dict(floor=1.0, head_weight=0.5, ldlq_rounds=1, refine_steps=0)   # the first defaults
CH = ("counts", "hidden")


def _vq(calib=CH, **options):
    """A vq preset: the first defaults overridden by `options`."""
    return ("vq.vq_method", {**FIRST, **options}, calib)


PRESETS = {
    "quant_gptq": ("quantize.quant_gptq_method", dict(), CH),
    "quant_freq": ("quantize.quant_freq_method", dict(), ("counts",)),
    "vq": ("vq.vq_method", dict(), CH),               # vq_method's defaults: what is kept
    # no hidden states: nearest codes; plain vector codes (no gain) vs the norm stored apart
    "vq_plain": _vq(("counts",), norm="none"),
    "vq_norm": _vq(("counts",)),
    "vq_norm_ls": _vq(("counts",), gain="ls"),
    "vq_norm_fp16": _vq(("counts",), norm="fp16"),
    "vq_flat": _vq(()),
    # + LDLQ against the hidden-state second moment
    "vq_h05": _vq(),
    "vq_ls": _vq(gain="ls"),
    "vq_hls": _vq(gain="hls"),
    "vq_h09": _vq(head_weight=0.9),
    "vq_plain_h09": _vq(norm="none", head_weight=0.9),
    "vq_h09_hls": _vq(gain="hls", head_weight=0.9),
    "vq_h097_hls": _vq(gain="hls", head_weight=0.97),
    "vq_h1_hls": _vq(gain="hls", head_weight=1.0),
    "vq_h09_w": _vq(gain="hls", head_weight=0.9, weighted=True),
    "vq_fine": _vq(tiers=FINE),
    "vq_fine_h09": _vq(gain="hls", head_weight=0.9, tiers=FINE),
    "vq_h09_r2": _vq(head_weight=0.9, ldlq_rounds=2),
    "vq_h09_f025": _vq(head_weight=0.9, floor=0.25),
    "vq_h09_f01": _vq(head_weight=0.9, floor=0.1),
    "vq_norefine": ("vq.vq_method", dict(refine_steps=0), CH),
    "vq_refine200": ("vq.vq_method", dict(refine_steps=200), CH),
    "vq_f025": _vq(floor=0.25),
    "vq_f4": _vq(floor=4.0),
}


def calibration(model, tok, data: str, cache: str, n_hidden: int = 8192) -> dict:
    path = os.path.join(cache, f"smol_vq_calib_{n_hidden}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return {"counts": z["counts"], "hidden": z["hidden"]}
    from dirjax.compress.calib import collect
    valid = open(os.path.join(data, "wikitext-2/valid.txt")).read()
    cal = collect(model, tok, valid, n_hidden=n_hidden)
    np.savez(path, **cal)
    return cal


def tier_mix(emb) -> str:
    if not hasattr(emb, "tiers"):
        if hasattr(emb, "bits"):
            n = np.bincount(np.asarray(emb.bits[...]).astype(int))
            return " ".join(f"{b}b:{100 * c / n.sum():.0f}%" for b, c in enumerate(n) if c)
        return ""
    rows = emb.rows_per_tier()
    return " ".join(f"{b / g:g}b:{100 * n / sum(rows):.0f}%"
                    for (g, b), n in zip(emb.tiers, rows) if n)


def main():
    import importlib

    import dirjax
    from dirjax.compress.codec import QuantizeError
    from dirjax.evaluate.perplexity import causal_perplexity, tokenize_stream
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="the shared data dir (wikitext-2, wikitext-2-raw)")
    p.add_argument("--presets", default="vq")
    p.add_argument("--rates", default="16,32")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--orig", action="store_true", help="also the original-head perplexity")
    p.add_argument("--cache",
                   default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "dirjax_vq_cache"))
    p.add_argument("--set", default="",
                   help="extra options for every vq preset: k=v;k=v (python literals)")
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    if a.list:
        print("\n".join(PRESETS))
        return
    extra = {}
    for kv in filter(None, a.set.split(";")):
        k, v = kv.split("=", 1)
        extra[k] = eval(v)                     # noqa: S307  (a bench flag, literals only)
    os.makedirs(a.cache, exist_ok=True)
    model, tok = dirjax.load_model("smollm2-135m")
    table = np.asarray(model.embedding.table(), np.float32)
    cal = calibration(model, tok, a.data, a.cache)
    test = open(os.path.join(a.data, "wikitext-2-raw/test.txt")).read()
    ids = tokenize_stream(tok, test, a.tokens)

    def ppl(m):
        return causal_perplexity(m, ids, max_length=512, progress=False)["ppl"]

    print(f"| original | 1 | 1.00 | {ppl(model):.2f} | - | - | - | - |", flush=True)
    print("| preset | rate | bytes rate | tied ppl | orig head ppl | rel err | secs "
          "| rows per tier |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.presets.split(","):
        fn_name, opts, calib = PRESETS[name]
        mod, fn = fn_name.split(".")
        fn = getattr(importlib.import_module(f"dirjax.compress.{mod}"), fn)
        opts = {**opts, **(extra if mod == "vq" else {})}
        for r in [float(x) for x in a.rates.split(",")]:
            t0 = time.time()
            try:
                emb = fn(table, rate=r, **opts, **{k: cal[k] for k in calib})
            except QuantizeError as e:
                print(f"| {name} | {r:g} | - | refused: {e} |", flush=True)
                continue
            secs = time.time() - t0
            rec = np.asarray(emb.table())
            err = np.linalg.norm(rec - table) / np.linalg.norm(table)
            tied = ppl(dirjax.swap_embedding(model, emb, output="tied"))
            orig = ppl(dirjax.swap_embedding(model, emb, output="original")) if a.orig else None
            print(f"| {name} | {r:g} | {table.size * 4 / emb.storage_bytes():.2f} | {tied:.2f} | "
                  f"{'-' if orig is None else f'{orig:.2f}'} | {err:.4f} | {secs:.0f} | "
                  f"{tier_mix(emb)} |", flush=True)


if __name__ == "__main__":
    main()
