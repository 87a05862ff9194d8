"""Perplexity speed of Gemma 3 270M (offline GGUF, dequantised to fp32): dirjax's perplexity
step (jit-compiled NNX Gemma3, the 262k-row head scored in vocabulary chunks without [L, V]
logits) against transformers-PyTorch (fp32, torch.no_grad(), full logits + log_softmax) on the
same windows, in the same run.

    .venv/bin/python bench/gemma3_speed.py [--tokens 2048] [--window 512] [--rounds 3]
                                           [--data-dir ../shared/data]  # or $DIRJAX_DATA_DIR

The first `--tokens` tokens of WikiText-2 raw test, cut into windows of `--window` tokens, each
run as [BOS] + window (batch 1, one window at a time: the fp32 logits of one window are
513 x 262,144 x 4 B = 0.5 GB), every token of the window scored. Each round times all windows
with dirjax, then with PyTorch (interleaved, so a slow spell of a shared machine hits both);
prints the median tokens/s of each over the rounds, their ratio, both perplexities and the
largest logit difference on the first window. Needs torch and accelerate for the PyTorch side
(`make fixtures` installs them).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax import load_model, runtime
from dirjax.evaluate.batching import jit_on_model
from dirjax.evaluate.perplexity import _causal_nll
from dirjax.evaluate.scoring import CHUNK
from dirjax.models import resolve_alias


def windows(tokenizer, data_dir: Path, n_tokens: int, window: int) -> np.ndarray:
    """[n_tokens / window, 1 + window] int32: BOS + consecutive windows of WikiText-2 raw test."""
    text = (data_dir / "wikitext-2-raw" / "test.txt").read_text()[: 12 * n_tokens]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    assert len(ids) == n_tokens and n_tokens % window == 0, (len(ids), n_tokens, window)
    body = np.asarray(ids, np.int32).reshape(-1, window)
    bos = np.full((body.shape[0], 1), tokenizer.bos_token_id, np.int32)
    return np.concatenate([bos, body], axis=1)


def jax_scorer(model):
    """fn(ids [1, L]) -> sum of -log p(token | before) over positions 1..L-1: dirjax's
    perplexity step itself (`evaluate.perplexity._causal_nll` under `jit_on_model`: final
    hidden states, then the vocabulary scored `scoring.CHUNK` rows at a time, no [L, V] logits)."""
    step, state = jit_on_model(functools.partial(_causal_nll, chunk=CHUNK), model)

    def nll(ids):
        ones = np.ones_like(ids)
        return step(state, ids, ones, ones).sum()

    return nll


def jax_logits(model, ids):
    """[1, L, V] logits of one window (the full head, for the logit comparison only)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))(state, jnp.asarray(ids))


def torch_scorer(threads: int, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    path = resolve_alias("gemma3-270m")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)).eval()

    def nll(ids):
        x = torch.tensor(ids, dtype=torch.long)
        with torch.no_grad():
            logits = model(x).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            return -logp.gather(-1, x[:, 1:, None]).sum(), logits

    return nll, torch.get_num_threads()


def torch_loss(score):
    return lambda ids: score(ids)[0]


def timed(score, batches) -> tuple[float, float]:
    """(seconds for all windows, total NLL)."""
    t = time.perf_counter()
    total = 0.0
    for ids in batches:
        total += float(score(ids))  # waits for the result
    return time.perf_counter() - t, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="parameters and compute of both (bfloat16: AMX/AVX512-BF16 CPUs)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("DIRJAX_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = parser.parse_args()

    runtime.setup()
    model, tokenizer = load_model("gemma3-270m", dtype=args.dtype)
    data = windows(tokenizer, args.data_dir, args.tokens, args.window)
    batches = [data[i:i + 1] for i in range(len(data))]
    scored = data.shape[0] * args.window
    jax_score = jax_scorer(model)
    t = time.perf_counter()
    float(jax_score(batches[0]))
    print(f"Gemma 3 270M {args.dtype} (GGUF Q4_K_M dequantised), {len(batches)} windows of [BOS] + "
          f"{args.window} tokens, {scored} tokens scored, WikiText-2 raw test; "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s)); "
          f"jax compile + first window {time.perf_counter() - t:.1f} s")
    torch_score, threads = torch_scorer(args.torch_threads, args.dtype)
    _, torch_logits = torch_score(batches[0])  # warm-up
    max_diff = np.abs(np.asarray(jax_logits(model, batches[0]), np.float32)
                      - torch_logits.float().numpy()).max()
    del torch_logits

    seconds = {"dirjax": [], "torch": []}
    nll = {}
    for r in range(args.rounds):
        for name, score in (("dirjax", jax_score), ("torch", torch_loss(torch_score))):
            s, nll[name] = timed(score, batches)
            seconds[name].append(s)
        print(f"  round {r + 1}: dirjax {scored / seconds['dirjax'][-1]:7.0f} tokens/s, "
              f"PyTorch {scored / seconds['torch'][-1]:7.0f} tokens/s")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"dirjax (jit, chunked head)  {scored / med['dirjax']:7.0f} tokens/s (median of "
          f"{args.rounds}), perplexity {np.exp(nll['dirjax'] / scored):.3f}")
    print(f"transformers-PyTorch ({threads} thr) {scored / med['torch']:7.0f} tokens/s (median of "
          f"{args.rounds}), perplexity {np.exp(nll['torch'] / scored):.3f}")
    print(f"ratio dirjax / PyTorch tokens/s: {med['torch'] / med['dirjax']:.2f}")
    print(f"max |logit difference|, first window: {max_diff:.2e}")


if __name__ == "__main__":
    main()
