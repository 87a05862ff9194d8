"""Generation speed of SmolLM2-135M (offline GGUF, dequantised to fp32): dirjax's `generate`
(prefill + a jit-compiled KV-cache decode step) against transformers-PyTorch `generate`
(greedy, use_cache=True, fp32, torch.no_grad()) on the same prompts, in the same run.

    .venv/bin/python bench/generate_speed.py [--prompt 128] [--new 128] [--batches 1,8] [--rounds 3]

Each prompt is `--prompt` tokens of English prose (the stdlib's pydoc topics; a batch takes
consecutive slices, so no padding); each row generates exactly `--new` tokens (no EOS).
Rounds interleave dirjax and PyTorch at each batch size, after one untimed warm-up of each
(dirjax's compiles: one prefill, one decode step); printed: median seconds and new tokens/s
per batch size, the ratio dirjax / PyTorch tokens/s, and how many rows' greedy tokens agree.
Without torch (or transformers' GGUF reader) only dirjax is timed. On a shared, oversubscribed
machine torch's OpenMP threads spin: `--torch-threads 1` was PyTorch's faster setting there
(6x faster than its default 2 threads at batch 1).

Measured (`--torch-threads 1`, 2-core CPU shared with other jobs, load average ~13, one run):
batch 1: dirjax 18.6 tokens/s, PyTorch 6.7, ratio 2.77; batch 8: 29.6 vs 22.1, ratio 1.34;
every row's greedy tokens identical to PyTorch's.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax

from dirjax import load_model
from dirjax.models import resolve_alias
from dirjax.models.generate import generate


def prompt_ids(tokenizer, batch: int, n: int) -> list[list[int]]:
    """`batch` consecutive n-token slices of the pydoc topics: [batch][n] ids."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[: 20 * n * batch]
    ids = tokenizer(text)["input_ids"]
    assert len(ids) >= n * batch, len(ids)
    return [ids[i * n:(i + 1) * n] for i in range(batch)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def torch_generator(threads: int | None):
    """`run(prompts, new) -> new tokens` with transformers-PyTorch, or None without torch."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    path = resolve_alias("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()

    def run(prompts: list[list[int]], new: int) -> list[list[int]]:
        x = torch.tensor(prompts, dtype=torch.long)
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 use_cache=True, pad_token_id=0)
        return out[:, x.shape[1]:].tolist()

    run.threads = torch.get_num_threads()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--no-torch", action="store_true", help="time dirjax only")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    model, tokenizer = load_model("smollm2-135m")
    prompts = prompt_ids(tokenizer, max(batches), args.prompt)
    torch_run = None if args.no_torch else torch_generator(args.torch_threads)
    print(f"SmolLM2-135M fp32, {args.prompt}-token prompts, {args.new} new tokens per row "
          f"(greedy), median of {args.rounds} rounds, {jax.devices()[0].platform} "
          f"({jax.device_count()} device(s))"
          + ("" if torch_run is None else f"; PyTorch {torch_run.threads} thread(s)"))
    if torch_run is None:
        print("transformers-PyTorch: " + ("--no-torch" if args.no_torch else
                                          "torch/transformers not installed") + ", skipped")

    for B in batches:
        rows = prompts[:B]
        jax_run = lambda: generate(model, rows, args.new)  # noqa: E731
        first, ours = timed(jax_run)  # compiles the prefill and the decode step
        print(f"batch {B}: dirjax first call (compiles) {first:.1f} s")
        theirs = torch_run(rows, args.new) if torch_run else None
        times = {"dirjax": [], "pytorch": []}
        for _ in range(args.rounds):
            times["dirjax"].append(timed(jax_run)[0])
            if torch_run:
                times["pytorch"].append(timed(lambda: torch_run(rows, args.new))[0])
        new_tokens = B * args.new
        med = {k: statistics.median(v) for k, v in times.items() if v}
        line = (f"batch {B}: dirjax {med['dirjax']:6.2f} s  {new_tokens / med['dirjax']:7.1f} "
                f"tokens/s")
        if torch_run:
            agree = sum(a == b for a, b in zip(ours, theirs))
            line += (f" | PyTorch {med['pytorch']:6.2f} s  {new_tokens / med['pytorch']:7.1f} "
                     f"tokens/s | ratio dirjax / PyTorch tokens/s {med['pytorch'] / med['dirjax']:.2f}"
                     f" | rows with identical tokens {agree}/{B}")
        print(line, flush=True)
        print("  rounds (s): " + "  ".join(f"{k} " + ",".join(f"{t:.2f}" for t in v)
                                           for k, v in times.items() if v))


if __name__ == "__main__":
    main()
