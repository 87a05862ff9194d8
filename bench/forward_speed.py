"""Forward speed of SmolLM2-135M (offline GGUF, dequantised to fp32) on one 512-token sequence,
against the machine's matrix peak: dirjax's jit-compiled NNX Llama in fp32 and in its bf16
compute mode (`compute_dtype="bfloat16"`: bf16 operands, fp32 sums), and transformers-PyTorch
in fp32 and bf16 (torch.no_grad()), on the same input, in the same run.

    .venv/bin/python bench/forward_speed.py [--tokens 512] [--runs 7] [--torch-threads 0]

Prints, in order:
  - the load average at start (figures count only from a quiet machine: load < 1.5);
  - the dot peaks, GFLOP/s of XLA's jitted products on the model's own shapes (each Linear,
    attention's two batched products, the head), fp32 and bf16 x bf16 -> fp32, and from them
    the FLOP bound: the tokens/s a forward whose every product ran at its shape's peak would
    reach (elementwise work, norms and softmax counted as free);
  - per row (dirjax fp32, dirjax bf16, PyTorch fp32, PyTorch bf16): median tokens/s over
    `--runs` timed forwards after one warm-up, its GFLOP/s, the fraction of its dtype's FLOP
    bound, and the perplexity of the window (dirjax: its own scorer,
    `causal_perplexity(compute_dtype=...)`, fp32 log-sum-exp; PyTorch: log_softmax of its
    logits in fp32);
  - the largest logit difference of each row from dirjax fp32.
All forwards compute the full logits [1, T, 49152]. The PyTorch rows need torch and accelerate
(`make fixtures` installs them); without them they are skipped.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax import load_model
from dirjax.evaluate import causal_perplexity
from dirjax.evaluate.batching import compute_state
from dirjax.models import resolve_alias

QUIET = 1.5   # load average below which figures count (DEVELOPERS.md)
DTYPES = ("float32", "bfloat16")


def text_ids(tokenizer, n: int) -> np.ndarray:
    """The first n tokens of the stdlib's pydoc topics (English prose): [1, n] int32."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[: 20 * n]
    ids = tokenizer(text)["input_ids"][:n]
    assert len(ids) == n, len(ids)
    return np.asarray(ids, np.int32)[None]


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def load_line() -> str:
    """The 1-minute load average, and whether this run's figures count."""
    load = os.getloadavg()[0]
    verdict = "quiet" if load < QUIET else f"NOT quiet (>= {QUIET}): figures do not count"
    return f"load average at start {load:.2f} ({verdict})"


# ---------------------------------------------------------------------------- the FLOP bound

def matmul_terms(c, t: int, head_rows: int, head_slices: int = 1) -> list[tuple]:
    """The products of one forward of a Llama-family model (Llama, Gemma 3) on [1, t] tokens:
    (name, a shape, b shape, times per forward). Attention's are the full [t, t] squares, as
    dirjax and PyTorch's masked attention compute them; the head is `head_slices` products
    of `head_rows` vocabulary rows."""
    d, hd, ff, n_layers = c.hidden_size, c.head_dim, c.intermediate_size, c.num_layers
    q, kv, g = c.num_heads * hd, c.num_kv_heads * hd, c.num_heads // c.num_kv_heads
    return [
        ("q, o", (t, d), (d, q), 2 * n_layers),
        ("k, v", (t, d), (d, kv), 2 * n_layers),
        ("gate, up", (t, d), (d, ff), 2 * n_layers),
        ("down", (t, ff), (ff, d), n_layers),
        ("q k^T", (c.num_kv_heads, g * t, hd), (c.num_kv_heads, hd, t), n_layers),
        ("p v", (c.num_kv_heads, g * t, t), (c.num_kv_heads, t, hd), n_layers),
        ("head", (t, d), (d, head_rows), head_slices),
    ]


def flops(a: tuple, b: tuple) -> float:
    """2 m k n per (batched) product a [..., m, k] x b [..., k, n]."""
    return 2.0 * float(np.prod(a[:-1])) * a[-1] * b[-1]


def dot_peak(a: tuple, b: tuple, dtype: str, runs: int, reps: int = 8) -> float:
    """GFLOP/s of XLA's jitted a x b with operands in `dtype`, summed in fp32 (median over
    `runs` of `reps` products dispatched back to back: in a forward the products follow each
    other with the threads awake; one product timed alone, from idle threads, read so slow on
    the 2-core VM of 2026-12-03 that the whole fp32 forward ran at 127% of that "bound")."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(a), dtype)
    y = jnp.asarray(np.random.default_rng(1).standard_normal(b), dtype)
    dot = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))

    def back_to_back():
        outs = [dot(x, y) for _ in range(reps)]
        jax.block_until_ready(outs)
    return flops(a, b) * reps / median_seconds(back_to_back, runs) / 1e9


def flop_bound(terms: list[tuple], runs: int) -> dict:
    """{dtype: (seconds per forward at every shape's peak, {name: GFLOP/s})}, and "flops"."""
    out = {"flops": sum(flops(a, b) * n for _, a, b, n in terms)}
    for dtype in DTYPES:
        peaks = {name: dot_peak(a, b, dtype, runs) for name, a, b, _ in terms}
        seconds = sum(flops(a, b) * n / (peaks[name] * 1e9) for name, a, b, n in terms)
        out[dtype] = (seconds, peaks)
    return out


def print_bound(bound: dict, t: int) -> None:
    names = list(bound["float32"][1])
    print(f"dot peaks on the model's shapes, GFLOP/s (XLA, jit; operands -> fp32 sums): "
          f"{bound['flops'] / 1e9:.1f} GFLOP per forward")
    print("  " + "  ".join(f"{n:>9}" for n in ["", *names, "bound"]))
    for dtype in DTYPES:
        seconds, peaks = bound[dtype]
        cells = [f"{peaks[n]:9.0f}" for n in names]
        print(f"  {dtype:>9}  " + "  ".join(cells) +
              f"  {t / seconds:6.0f} tokens/s ({bound['flops'] / seconds / 1e9:.0f} GFLOP/s)")


def print_row(name: str, t: int, seconds: float, bound: dict, dtype: str, ppl: float,
              extra: str = "") -> None:
    """One scorer: `t` tokens in `seconds` per forward (the forward `bound` counts)."""
    frac = bound[dtype][0] / seconds
    print(f"{name:<36} {t / seconds:6.0f} tokens/s  {bound['flops'] / seconds / 1e9:6.0f} "
          f"GFLOP/s  {frac:5.0%} of the {dtype} bound  ppl {ppl:8.3f}{extra}")


# ---------------------------------------------------------------------------- the rows

def bench_jax(model, ids: np.ndarray, runs: int, compute_dtype: str) -> dict:
    """The jitted full-logit forward on the model's state cast to `compute_dtype`."""
    graphdef, state = nnx.split(model)
    state = compute_state(state, compute_dtype)
    forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    ids = jnp.asarray(ids)
    t = time.perf_counter()
    compiled = forward.lower(state, ids).compile()
    compile_s = time.perf_counter() - t
    seconds = median_seconds(lambda: compiled(state, ids).block_until_ready(), runs)
    ppl = causal_perplexity(model, ids[0], max_length=ids.shape[1], batch_size=1,
                            progress=False, compute_dtype=compute_dtype)["ppl"]
    return {"compile_s": compile_s, "seconds": seconds, "ppl": ppl,
            "logits": np.asarray(compiled(state, ids), np.float32)}


def bench_torch(ids: np.ndarray, runs: int, dtype: str, threads: int) -> dict | None:
    """transformers-PyTorch in `dtype` (parameters and compute), or None without torch."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    quiet_transformers()
    if threads:
        torch.set_num_threads(threads)
    path = resolve_alias("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)).eval()
    x = torch.tensor(ids, dtype=torch.long)

    def run():
        with torch.no_grad():
            return model(x).logits

    seconds = median_seconds(run, runs)
    logits = run().float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, x[:, 1:, None])
    return {"seconds": seconds, "ppl": float(torch.exp(-logp.mean())),
            "logits": logits.numpy(), "threads": torch.get_num_threads()}


def quiet_transformers() -> None:
    """No progress bars from transformers' GGUF loading between the printed rows."""
    from transformers.utils import logging
    logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"     # its GGUF reader's own bars


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()

    print(load_line())
    model, tokenizer = load_model("smollm2-135m")
    ids = text_ids(tokenizer, args.tokens)
    T = ids.shape[1]
    print(f"SmolLM2-135M (parameters fp32), batch 1 x {T} tokens, median of {args.runs} runs, "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s))")
    c = model.config
    bound = flop_bound(matmul_terms(c, T, c.vocab_size), args.runs)
    print_bound(bound, T)
    ref = None
    for dtype in DTYPES:
        j = bench_jax(model, ids, args.runs, dtype)
        ref = j["logits"] if ref is None else ref
        print_row(f"dirjax {dtype} (jit)", T, j["seconds"], bound, dtype, j["ppl"],
                  f"  compile {j['compile_s']:.1f} s  max |logit - dirjax fp32| "
                  f"{np.abs(j['logits'] - ref).max():.2e}")
    for dtype in DTYPES:
        t = bench_torch(ids, args.runs, dtype, args.torch_threads)
        if t is None:
            print("transformers-PyTorch: torch/transformers not installed, skipped")
            break
        print_row(f"PyTorch {dtype} ({t['threads']} thr)", T, t["seconds"], bound, dtype,
                  t["ppl"], f"  max |logit - dirjax fp32| {np.abs(t['logits'] - ref).max():.2e}")


if __name__ == "__main__":
    main()
