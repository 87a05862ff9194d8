"""Decode speed against the memory bound: dirjax's `generate` on SmolLM2-135M and Gemma 3 270M
(offline GGUF, dequantised to fp32), the original and with compressed tied tables (quant_gptq
at rate 10, vq at rate 16), at batch 1 and 8, beside the machine's streaming bandwidth and
transformers-PyTorch `generate` (when torch is importable), all in one run.

    .venv/bin/python bench/generate_speed.py [--models smollm2-135m,gemma3-270m]
        [--methods original,quant_gptq:10,vq:16] [--batches 1,8] [--prompt 128] [--new 128]
        [--rounds 3] [--cache-dir ~/.cache/dirjax/bench] [--dtype float32]
        [--torch-threads N] [--no-torch] [--n-hidden 8192] [--compress-only]

Decoding one token at a time reads every weight once per step (and the KV cache), so a step
cannot beat (bytes read per step) / (streaming bandwidth). Printed, per model, method and
batch B:
  call      new tokens/s of a whole `generate` call (prefill + --new tokens, no EOS)
  step      tokens/s of the decode steps alone: B (new - 1) / (t(call) - t(prefill and one
            token)), both medians of interleaved rounds after an untimed compile
  MB/step   bytes a step reads: every array of the model once (the head's codes, scales,
            codebooks, tier ids, rotation; the dense table for the original) + the whole KV
            cache of prompt + new slots (attention reads all of them)
  bound     B x bandwidth / (bytes a step), the tokens/s memory traffic allows; % = step/bound
The bandwidth is the faster of two jitted reductions of a 1 GiB fp32 buffer (far larger than
the caches): its sum and its product with a vector, median of 5 each, measured first in the
same process. The load average is printed at the start: timings taken above ~1.5 on a shared
machine are not figures.

Prompts are `--prompt` tokens of English prose (the stdlib's pydoc topics, consecutive slices:
no padding). quant_gptq and vq are calibrated on the stdlib "train" topics (token counts and
`--n-hidden` final hidden states of the original model, `dirjax.compress.calib.collect`), as
the shipped configs do; each compressed embedding is saved in `--cache-dir`
(`dirjax.compress.store`), keyed by the table's digest, the method, the rate and the
calibration size, so a rerun skips compressing (vq at rate 16 on Gemma 3's 262k rows takes
many minutes). PyTorch runs the original model (greedy, use_cache=True, torch.no_grad(), the
same dtype) on the same prompts, interleaved with dirjax's rounds; on a shared,
oversubscribed machine torch's OpenMP threads spin: `--torch-threads 1` was its faster setting
there. `--dtype bfloat16` loads the model in bf16 (half the bytes; see docs/speed.md for where
that helps). `--compress-only` makes the compressed embeddings and times nothing (the slow
part: run it first, on any machine). A quick check: `--models smollm2-135m --methods original
--batches 1 --new 16 --rounds 1`.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from dirjax import load_model, swap_embedding
from dirjax.compress import compress
from dirjax.compress.cache import digest
from dirjax.compress.calib import collect
from dirjax.compress.store import load_compressed, save_compressed
from dirjax.data.text import load_text
from dirjax.evaluate.perplexity import bos_of
from dirjax.models import resolve_alias
from dirjax.models.generate import generate

GIB = 1 << 30
# where `compressed` saves and finds compressed embeddings, and the calibration states it
# makes them with (part of the cache key): bench/gemma3_speed.py reuses both
CACHE_DIR = Path(os.environ.get("DIRJAX_CACHE", "~/.cache/dirjax")).expanduser() / "bench"
N_HIDDEN = 8192


# ----------------------------------------------------------------------------- the machine
def bandwidth(rounds: int = 5) -> tuple[float, dict]:
    """Streaming read bandwidth, bytes/s: the faster of two jitted reductions of a 1 GiB fp32
    buffer `[2^18, 1024]`, its sum and its product with a vector (the matrix-vector emitter
    that decode's products use; it reads the buffer with every core), median of `rounds`
    each -> (bytes/s, {probe: bytes/s})."""
    x = jnp.ones((GIB // 4 // 1024, 1024), jnp.float32)
    probes = {"sum": jax.jit(lambda x: x.sum()),
              "matrix-vector": jax.jit(lambda x: (x @ jnp.ones(1024, x.dtype)).sum())}
    rates = {}
    for name, fn in probes.items():
        fn(x).block_until_ready()
        times = [timed(lambda: fn(x).block_until_ready())[0] for _ in range(rounds)]
        rates[name] = GIB / statistics.median(times)
    return max(rates.values()), rates


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# ----------------------------------------------------------------------------- the models
def prompt_ids(tokenizer, batch: int, n: int) -> list[list[int]]:
    """`batch` consecutive n-token slices of the pydoc topics: [batch][n] ids."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[: 20 * n * batch]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= n * batch, len(ids)
    return [ids[i * n:(i + 1) * n] for i in range(batch)]


def compressed(model, tokenizer, alias: str, method: str, rate: float, cache_dir: Path,
               n_hidden: int):
    """The tied-swapped model with `method` at `rate`, its embedding from `cache_dir` when a
    run saved it there, else compressed (calibrated as the shipped configs do) and saved."""
    table = model.embedding.table()
    key = digest(table, method, rate, n_hidden)[:16]
    where = cache_dir / f"{alias}-{method}-r{rate:g}-{key}"
    if (where / "meta.json").exists():
        print(f"  {method} rate {rate:g}: loaded from {where}", flush=True)
        emb = load_compressed(where)
    else:
        calib = collect(model, tokenizer, load_text("stdlib", "train"), n_hidden=n_hidden,
                        bos_id=bos_of(tokenizer))
        took, emb = timed(lambda: compress(table, rate=rate, method=method, **calib))
        save_compressed(emb, where)
        print(f"  {method} rate {rate:g}: compressed in {took:.0f} s, saved to {where}",
              flush=True)
    return swap_embedding(model, emb)


def step_bytes(model, batch: int, slots: int) -> int:
    """Bytes one decode step reads: every array of the model once (a tied table is one array)
    and the whole KV cache of `slots` slots per row."""
    weights = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    cache = jax.eval_shape(lambda: model.init_cache(batch, slots))
    return weights + sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(cache))


def torch_generator(alias: str, dtype: str, threads: int | None):
    """`run(prompts, new) -> new tokens` with transformers-PyTorch's generate of the original
    checkpoint, or (None, why) without torch or when its GGUF reader refuses the file."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None, "torch/transformers not installed"
    if threads:
        torch.set_num_threads(threads)
    path = resolve_alias(alias)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)).eval()
    except Exception as e:  # transformers' GGUF reader: assorted errors for what it lacks
        return None, f"transformers could not load {path.name}: {str(e).splitlines()[0]}"

    def run(prompts: list[list[int]], new: int) -> list[list[int]]:
        x = torch.tensor(prompts, dtype=torch.long)
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 use_cache=True, pad_token_id=0)
        return out[:, x.shape[1]:].tolist()

    return run, f"PyTorch {torch.get_num_threads()} thread(s)"


# ----------------------------------------------------------------------------- timing
def measure(model, rows, new: int, rounds: int, torch_run):
    """Medians over interleaved rounds: (whole call s, prefill + one token s, PyTorch s or
    None, dirjax's tokens, PyTorch's tokens or None, first call s)."""
    def call():
        return generate(model, rows, new, eos_id=None)

    def prefill():
        return generate(model, rows, 1, eos_id=None)

    first, ours = timed(call)
    prefill()
    theirs = torch_run(rows, new) if torch_run else None
    times = {"call": [], "prefill": [], "torch": []}
    for _ in range(rounds):
        times["call"].append(timed(call)[0])
        times["prefill"].append(timed(prefill)[0])
        if torch_run:
            times["torch"].append(timed(lambda: torch_run(rows, new))[0])
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    return med["call"], med["prefill"], med["torch"], ours, theirs, first


def report(alias, method, model, rows, args, bw, torch_run):
    B, new = len(rows), args.new
    call, pre, torch_s, ours, theirs, first = measure(model, rows, new, args.rounds, torch_run)
    step = B * (new - 1) / max(call - pre, 1e-9)
    per_step = step_bytes(model, B, args.prompt + new)
    bound = B * bw / per_step
    print(f"{alias:13s} {method:13s} B={B}  call {B * new / call:6.1f}  step {step:6.1f}  "
          f"{per_step / 1e6:6.0f} MB/step  bound {bound:6.1f}  {100 * step / bound:3.0f}%  "
          f"(first call {first:.1f} s)", flush=True)
    if torch_s is not None:
        agree = sum(a == b for a, b in zip(ours, theirs))
        print(f"{'':13s} {'PyTorch':13s} B={B}  call {B * new / torch_s:6.1f}  "
              f"dirjax / PyTorch call tokens/s {torch_s / call:.2f}; rows with identical "
              f"tokens {agree}/{B}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--methods", default="original,quant_gptq:10,vq:16",
                        help="original and/or method:rate, comma-separated (tied head)")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--new", type=int, default=128, help="new tokens per row (>= 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR,
                        help="where compressed embeddings are saved and found again")
    parser.add_argument("--n-hidden", type=int, default=N_HIDDEN,
                        help="calibration hidden states for quant_gptq / vq")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--no-torch", action="store_true", help="time dirjax only")
    parser.add_argument("--compress-only", action="store_true",
                        help="make (or find) the compressed embeddings in --cache-dir, time "
                             "nothing: the slow part, which a loaded machine can do")
    args = parser.parse_args()
    assert args.new >= 2, "--new must be >= 2 (the step rate is a difference of two calls)"
    batches = [int(b) for b in args.batches.split(",")]
    methods = [m.split(":") for m in args.methods.split(",")]

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(timings above ~1.5 on a shared machine are not figures); "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"{os.cpu_count()} CPU(s)", flush=True)
    if args.compress_only:
        for alias in args.models.split(","):
            model, tokenizer = load_model(alias, dtype=jnp.dtype(args.dtype))
            for m in methods:
                if m[0] != "original":
                    compressed(model, tokenizer, alias, m[0], float(m[1]), args.cache_dir,
                               args.n_hidden)
        return
    bw, probes = bandwidth()
    print(f"streaming bandwidth {bw / 1e9:.1f} GB/s (1 GiB fp32: "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in probes.items())
          + f"); {args.prompt}-token prompts, {args.new} new tokens per row, greedy, median of "
          f"{args.rounds} rounds; tokens/s", flush=True)
    for alias in args.models.split(","):
        model, tokenizer = load_model(alias, dtype=jnp.dtype(args.dtype))
        prompts = prompt_ids(tokenizer, max(batches), args.prompt)
        torch_run = None
        if not args.no_torch and any(m[0] == "original" for m in methods):
            torch_run, why = torch_generator(alias, args.dtype, args.torch_threads)
            print(f"  transformers-PyTorch: {why}", flush=True)
        for m in methods:
            name = m[0]
            run_model = model if name == "original" else compressed(
                model, tokenizer, alias, name, float(m[1]), args.cache_dir, args.n_hidden)
            label = name if name == "original" else f"{name} r{float(m[1]):g}"
            for B in batches:
                report(alias, label, run_model, prompts[:B], args, bw,
                       torch_run if name == "original" else None)
        del model, torch_run


if __name__ == "__main__":
    main()
