"""Forward speed of SmolLM2-135M (offline GGUF, dequantised to fp32) on one 512-token sequence:
dirjax's jit-compiled NNX Llama against transformers-PyTorch (fp32, torch.no_grad()) on the same
input, measured in the same run.

    .venv/bin/python bench/forward_speed.py [--tokens 512] [--runs 7]

Prints the JAX compile time, then the median tokens/s over `--runs` timed forwards (after one
warm-up) of each (PyTorch at its default thread count and at 1 thread), and the ratios. Both compute the full logits [1, T, 49152]. Needs torch and
accelerate for the PyTorch side (`make fixtures` installs them); without them only JAX is timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax import load_model
from dirjax.models import resolve_alias


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


def bench_jax(model, ids: np.ndarray, runs: int) -> dict:
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    ids = jnp.asarray(ids)
    t = time.perf_counter()
    compiled = forward.lower(state, ids).compile()
    compile_s = time.perf_counter() - t
    seconds = median_seconds(lambda: compiled(state, ids).block_until_ready(), runs)
    return {"compile_s": compile_s, "seconds": seconds, "logits": np.asarray(compiled(state, ids))}


def bench_torch(ids: np.ndarray, runs: int) -> list[dict] | None:
    """transformers-PyTorch at its default thread count, then at 1 thread: on a shared,
    oversubscribed machine torch's OpenMP threads spin and 1 thread can be several times faster."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    path = resolve_alias("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    x = torch.tensor(ids, dtype=torch.long)

    def run():
        with torch.no_grad():
            return model(x).logits

    results = []
    for threads in dict.fromkeys([torch.get_num_threads(), 1]):
        torch.set_num_threads(threads)
        results.append({"seconds": median_seconds(run, runs), "threads": threads})
    results[0]["logits"] = run().numpy()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    ids = text_ids(tokenizer, args.tokens)
    T = ids.shape[1]
    print(f"SmolLM2-135M fp32, batch 1 x {T} tokens, median of {args.runs} runs, "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s))")
    j = bench_jax(model, ids, args.runs)
    print(f"dirjax (jax.jit)     compile {j['compile_s']:6.2f} s   "
          f"forward {j['seconds'] * 1e3:7.1f} ms   {T / j['seconds']:8.0f} tokens/s")
    torch_results = bench_torch(ids, args.runs)
    if torch_results is None:
        print("transformers-PyTorch: torch/transformers not installed, skipped")
        return
    for t in torch_results:
        print(f"transformers-PyTorch ({t['threads']} thread(s))       "
              f"forward {t['seconds'] * 1e3:7.1f} ms   {T / t['seconds']:8.0f} tokens/s   "
              f"dirjax/PyTorch tokens/s ratio {t['seconds'] / j['seconds']:.2f}")
    best = min(t["seconds"] for t in torch_results)
    print(f"ratio dirjax / best PyTorch tokens/s: {best / j['seconds']:.2f}")
    print(f"max |logit difference|: {np.abs(j['logits'] - torch_results[0]['logits']).max():.2e}")


if __name__ == "__main__":
    main()
