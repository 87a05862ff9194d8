"""dirjax against llama.cpp's own quantisers at equal bytes, on the token tables of SmolLM2-135M
(49,152 x 576) and Gemma 3 270M (262,144 x 640), input and tied head replaced.

    DIRJAX_DATA_DIR=../shared/data .venv/bin/python bench/llamacpp_compare.py \
        --lib /tmp/llamacpp/build/src/libggml-base.so --models smollm2,gemma3

Prints, per model, one markdown table: llama.cpp type, its bits per entry (from the bytes
`ggml_quantize_chunk` returns), the equivalent dirjax rate 32 / bpw, llama.cpp's perplexity
(and its ratio to the uncompressed model's, first row), dirjax's best method at that rate (the
rows of configs/llamacpp_rates.py's run, read from --dirjax-dir/results.json; missing rows print
"-" and the command that makes them), its perplexity and ratio, and who wins. --out also writes
the tables to a file.

llama.cpp's side, with llama.cpp's C library itself (ctypes, libggml-base):
  - importance matrix: llama.cpp's imatrix of a matmul's weight is, per input column j, the
    mean over the tokens of x_j^2 (tools/imatrix/imatrix.cpp: sums of x^2 and a count per
    column, saved as sum / count); the tied head's input is the final hidden state h, so
    imatrix = mean(h^2, axis 0) over the same calibration states dirjax's quant_gptq gets:
    `dirjax.compress.calib.collect(model, tokenizer, WikiText-2 validation, n_hidden=8192,
    bos_id=bos_of(tokenizer))["hidden"]` (after a BOS for Gemma, as the runner does).
  - quantised with `ggml_quantize_chunk(type, table, ..., imatrix)` (after `ggml_quantize_init`),
    the table seen as rows of 4 x 576 = 2,304 (SmolLM2) or 2 x 640 = 1,280 (Gemma) entries, so
    every 256-wide super-block is whole (576 and 640 are not multiples of 256: what llama.cpp
    itself does with these tables is store them Q8_0, 32-wide blocks, row by row), the imatrix
    tiled the same way. Q8_0 is quantised row by row.
  - dequantised with the `gguf` package (gguf.quants.dequantize), cross-checked against ggml's
    own `to_float` (ggml_get_type_traits) on the first rows.
  - the dequantised table swapped in as a dense embedding (dirjax.embedding.Embedding, input
    and tied head) and scored by the runner's own scorer (`EvalJob.prepare` of the model's
    config: configs/smollm2_wikitext.py, WikiText-2 raw test, 16,384 tokens, no BOS; or
    configs/gemma3_wikitext.py, BOS before each window).
Results per (model, type, tokens) are cached in --workdir (results.json); the quantised bytes
too.

dirjax's side: `python run.py --config configs/llamacpp_rates.py:PRESET
--config.data_dir=../shared/data` (PRESET smollm2, smollm2-vq, gemma3, gemma3-vq; workdir
runs/llamacpp_rates); --run-dirjax runs those presets from here first (reusing finished rows).

Building ggml (llama.cpp as vendored by the llama-cpp-python source distribution):
    pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/llamacpp
    tar xzf /tmp/llamacpp/llama_cpp_python-*.tar.gz -C /tmp/llamacpp
    touch /tmp/llamacpp/llama_cpp_python-*/vendor/llama.cpp/ggml/ggml.pc.in
    cmake -S /tmp/llamacpp/llama_cpp_python-*/vendor/llama.cpp/ggml -B /tmp/llamacpp/build \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_OPENMP=OFF \
        -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF
    cmake --build /tmp/llamacpp/build --target ggml-base -j2
(the sdist lacks ggml/ggml.pc.in, which the configure step reads: hence the `touch`). The
version printed in the table is read from llamacpp_version.txt in a folder above the library:
write there the llama.cpp commit of the sdist's CHANGELOG.md (0.3.36: ggml-org/llama.cpp@0c1e57098).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BITS_DEFAULT = ("Q8_0", "Q4_K", "Q3_K", "IQ3_XXS", "Q2_K", "IQ2_XXS", "IQ1_S")
# model -> (its eval config module, table rows per ggml row, dirjax presets of llamacpp_rates)
MODELS = {"smollm2": ("smollm2_wikitext", 4, ("smollm2", "smollm2-vq")),
          "gemma3": ("gemma3_wikitext", 2, ("gemma3", "gemma3-vq"))}
DIRJAX_METHODS = ("quant_gptq", "vq")


# ----------------------------------------------------------------------------- ggml (ctypes)

class TypeTraits(ctypes.Structure):
    """ggml.h's `struct ggml_type_traits` (the fields up to from_float_ref)."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def load_ggml(path: Path):
    """libggml-base through ctypes, its quantisation calls typed."""
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    return lib


def ggml_type(name: str) -> int:
    from gguf import GGMLQuantizationType
    return int(GGMLQuantizationType[name])


def quantize(lib, table: np.ndarray, name: str, imatrix: np.ndarray, group: int):
    """(bytes `[rows, row bytes]` uint8, entries per ggml row) of `table [V, d]` quantised to
    llama.cpp type `name` with `imatrix [d]`; Q8_0 row by row, the others `group` rows at once."""
    t = ggml_type(name)
    g = 1 if name == "Q8_0" else group
    v, d = table.shape
    src = np.ascontiguousarray(table, np.float32).reshape(v // g, d * g)
    imat = np.ascontiguousarray(np.tile(imatrix.astype(np.float32), g))
    nrows, n_per_row = src.shape
    lib.ggml_quantize_init(t)
    row_bytes = lib.ggml_row_size(t, n_per_row)
    dst = np.zeros(nrows * row_bytes, np.uint8)
    got = lib.ggml_quantize_chunk(t, src.ctypes.data, dst.ctypes.data, 0, nrows, n_per_row,
                                  imat.ctypes.data)
    if got != nrows * row_bytes:
        raise RuntimeError(f"{name}: ggml_quantize_chunk wrote {got} bytes, "
                           f"expected {nrows * row_bytes}")
    return dst.reshape(nrows, row_bytes), n_per_row


def dequantize(q: np.ndarray, name: str, shape) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    return gguf_dequantize(q, GGMLQuantizationType[name]).astype(np.float32).reshape(shape)


def ggml_dequantize(lib, q: np.ndarray, name: str, n_per_row: int) -> np.ndarray:
    """ggml's own to_float of the rows `q` -> `[rows, n_per_row]` fp32."""
    traits = lib.ggml_get_type_traits(ggml_type(name)).contents
    to_float = TO_FLOAT(traits.to_float)
    q = np.ascontiguousarray(q)
    out = np.zeros((len(q), n_per_row), np.float32)
    to_float(q.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out


def llamacpp_version(lib_path: Path) -> str:
    """The vendored llama.cpp's version: the file llamacpp_version.txt the build wrote in a
    folder above the library (see the docstring), else "?"."""
    for folder in list(lib_path.resolve().parents)[:3]:
        p = folder / "llamacpp_version.txt"
        if p.exists():
            return p.read_text().strip()
    return "?"


# ----------------------------------------------------------------------------- evaluation

def eval_setup(model_key: str, data_dir: str, tokens: int, workdir: Path):
    """(config, job, model, tokenizer): the runner's eval job for the model's config, prepared."""
    import importlib

    import jax.numpy as jnp

    from dirjax import saved
    from dirjax.config import check_config
    from dirjax.experiment import EvalJob

    config = importlib.import_module(f"dirjax.configs.{MODELS[model_key][0]}").get_config()
    config.data_dir = data_dir
    config.max_tokens = tokens
    config.progress = False
    c = check_config(config)
    job = EvalJob(c, workdir)
    job.read_data()
    model, tokenizer = saved.load_model(c.model, dtype=getattr(jnp, c.dtype),
                                        tokenizer=c.tokenizer or None)
    job.check_model(model)
    job.prepare(model, tokenizer)
    return c, job, model, tokenizer


def imatrix_of(model, tokenizer, data_dir: str, cache: Path) -> np.ndarray:
    """llama.cpp's imatrix of the tied head: per-column mean of h^2 over dirjax's calibration
    states (as the runner collects them for quant_gptq)."""
    if cache.exists():
        return np.load(cache)
    from dirjax.compress.calib import collect
    from dirjax.data import load_text
    from dirjax.evaluate.perplexity import bos_of
    text = load_text("wikitext-2", "validation", data_dir)
    h = collect(model, tokenizer, text, n_hidden=8192, max_length=512,
                bos_id=bos_of(tokenizer))["hidden"]
    imatrix = np.mean(h.astype(np.float64) ** 2, axis=0).astype(np.float32)
    np.save(cache, imatrix)
    return imatrix


def dirjax_rows(dirjax_dirs: list[Path], model_name: str, tokens_scored: int) -> list[dict]:
    """The finished rows of `model_name` in the results.json of each work directory."""
    rows = []
    for folder in dirjax_dirs:
        path = folder / "results.json"
        if path.exists():
            rows += [r for r in json.loads(path.read_text())
                     if r.get("model") == model_name and r.get("tokens") == tokens_scored
                     and r.get("task") == "causal_ppl"]
    return rows


def fmt_ppl(x):
    return f"{x:,.2f}" if x < 1000 else f"{x:,.0f}"


def run_model(args, lib, model_key: str, version: str) -> list[str]:
    from dirjax.embedding import Embedding, swap_embedding

    work = args.workdir / model_key
    work.mkdir(parents=True, exist_ok=True)
    cache_path = work / "results.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    t0 = time.perf_counter()
    c, job, model, tokenizer = eval_setup(model_key, args.data_dir, args.tokens, work)
    table = np.asarray(model.embedding.table(), np.float32)
    v, d = table.shape
    group = MODELS[model_key][1]

    def cached(key, fn):
        if key not in cache:
            cache[key] = fn()
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        return cache[key]

    def score_original():
        s = time.perf_counter()
        out = job.score(model)
        return {"ppl": out["value"], "tokens": out["tokens"], "seconds": time.perf_counter() - s}

    orig = cached(f"original/{args.tokens}", score_original)
    print(f"[{model_key}] {c.model} {v}x{d}: uncompressed ppl {orig['ppl']:.4f} "
          f"({orig['tokens']} tokens scored)", flush=True)
    imatrix = imatrix_of(model, tokenizer, args.data_dir, work / "imatrix.npy")

    results = {}
    for name in args.types:
        key = f"{name}/{args.tokens}/{version}"

        def make(name=name):
            s = time.perf_counter()
            q, n_per_row = quantize(lib, table, name, imatrix, group)
            qs = time.perf_counter() - s
            np.save(work / f"{name}.npy", q)
            deq = dequantize(q, name, (v, d))
            ref = ggml_dequantize(lib, q[:64], name, n_per_row).reshape(-1, d)
            check = float(np.max(np.abs(ref - deq[:len(ref)])))
            err = float(np.sum((deq - table) ** 2) / np.sum(table ** 2))
            s = time.perf_counter()
            out = job.score(swap_embedding(model, Embedding(deq), output="tied"))
            return {"ppl": out["value"], "tokens": out["tokens"], "bytes": int(q.nbytes),
                    "bpw": q.nbytes * 8 / (v * d), "quantize_seconds": qs,
                    "eval_seconds": time.perf_counter() - s, "rel_sq_error": err,
                    "max_abs_gguf_vs_ggml": check, "n_per_row": n_per_row,
                    "imatrix_required": bool(lib.ggml_quantize_requires_imatrix(ggml_type(name)))}

        results[name] = r = cached(key, make)
        print(f"[{model_key}] {name}: {r['bpw']:.4f} bpw, ppl {r['ppl']:.4f} "
              f"(rel. sq. error {r['rel_sq_error']:.4f}, gguf vs ggml to_float max |diff| "
              f"{r['max_abs_gguf_vs_ggml']:.2g}, eval {r['eval_seconds']:.0f} s)", flush=True)

    rows = dirjax_rows(args.dirjax_dir, c.model, orig["tokens"])
    base = orig["ppl"]
    lines = [f"{c.model} ({v:,} x {d}), WikiText-2 raw test, first {args.tokens:,} tokens "
             f"({orig['tokens']:,} scored{', BOS before each window' if job.bos else ''}), "
             f"input + tied head replaced; llama.cpp {version}, imatrix from 8,192 calibration "
             "states (WikiText-2 validation)", "",
             "| llama.cpp type | bits/entry | = dirjax rate | llama.cpp ppl (ratio) | dirjax "
             "method (rate reached) | dirjax ppl (ratio) | better at these bytes |",
             "|---|---:|---:|---:|---|---:|---|",
             f"| uncompressed (fp32) | 32 | 1 | {fmt_ppl(base)} (1.00x) | - | {fmt_ppl(base)} "
             "(1.00x) | - |"]
    missing = []
    for name, r in results.items():
        rate = 32.0 / r["bpw"]
        mine = [x for x in rows if x["method"] in DIRJAX_METHODS and x.get("output") == "tied"
                and abs(x["rate"] - rate) < 1e-6]
        lp = r["ppl"]
        if mine:
            best = min(mine, key=lambda x: x["value"])
            dp = best["value"]
            gap = (dp - lp) / lp      # dirjax's perplexity against llama.cpp's
            who = ("tie" if abs(gap) <= 0.001 else "dirjax" if gap < 0 else "llama.cpp") + \
                f" (dirjax ppl {100 * gap:+.1f}%)"
            others = ", ".join(f"{x['method']} {fmt_ppl(x['value'])}"
                               for x in mine if x is not best)
            dcell = (f"{best['method']} ({best['achieved_rate']:.2f})"
                     + (f"; also {others}" if others else ""))
            dppl = f"{fmt_ppl(dp)} ({dp / base:.3f}x)"
        else:
            dcell, dppl, who = "-", "-", "-"
            missing.append(name)
        lines.append(f"| {name} | {r['bpw']:.4g} | {rate:.4g} | {fmt_ppl(lp)} ({lp / base:.3f}x) "
                     f"| {dcell} | {dppl} | {who} |")
    if missing:
        lines += ["", f"(no dirjax row for {', '.join(missing)}: run `python run.py --config "
                  f"configs/llamacpp_rates.py:{MODELS[model_key][2][0]} "
                  f"--config.data_dir=../shared/data` and its -vq preset)"]
    lines += ["", f"({model_key}: {time.perf_counter() - t0:.0f} s in this run)"]
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,gemma3", help="comma list of " + ", ".join(MODELS))
    p.add_argument("--types", default=",".join(BITS_DEFAULT), help="llama.cpp types, comma list")
    p.add_argument("--tokens", type=int, default=16384, help="first tokens of WikiText-2 test")
    p.add_argument("--lib", type=Path, default=Path("/tmp/llamacpp/build/src/libggml-base.so"),
                   help="the built libggml-base shared library")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/llamacpp/work"),
                   help="cache of llama.cpp's results and quantised bytes")
    p.add_argument("--dirjax-dir", default="runs/llamacpp_rates",
                   help="work directories of the configs/llamacpp_rates.py runs, comma list "
                        "(--run-dirjax runs into the first)")
    p.add_argument("--run-dirjax", action="store_true",
                   help="run the configs/llamacpp_rates.py presets first (finished rows reused)")
    p.add_argument("--data-dir", default=os.environ.get("DIRJAX_DATA_DIR", ""),
                   help="local data folder (default $DIRJAX_DATA_DIR; empty: the Hub)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = p.parse_args()
    if not args.lib.is_file():
        sys.exit(f"llamacpp_compare: no ggml library at {args.lib} (build it: see this "
                 "script's docstring, or pass --lib PATH/libggml-base.so)")
    args.models = [m for m in args.models.split(",") if m]
    args.types = [t for t in args.types.split(",") if t]
    args.dirjax_dir = [Path(x) for x in args.dirjax_dir.split(",") if x]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        sys.exit(f"llamacpp_compare: unknown model {bad[0]!r} (one of {', '.join(MODELS)})")
    from gguf import GGMLQuantizationType
    bad = [t for t in args.types if t not in GGMLQuantizationType.__members__]
    if bad:
        sys.exit(f"llamacpp_compare: unknown llama.cpp type {bad[0]!r}")
    lib = load_ggml(args.lib)
    version = llamacpp_version(args.lib)
    if args.run_dirjax:
        from dirjax.configs.llamacpp_rates import get_config
        from dirjax.experiment import run_experiment
        for m in args.models:
            for preset in MODELS[m][2]:
                config = get_config(preset)
                config.data_dir = args.data_dir
                config.max_tokens = args.tokens
                run_experiment(config, args.dirjax_dir[0])
    out = []
    for m in args.models:
        out += run_model(args, lib, m, version) + [""]
    text = "\n".join(out)
    print()
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
