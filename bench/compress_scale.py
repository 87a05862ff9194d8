"""Scale: a synthetic 262144 x 2048 fp32 table (2 GiB, a Gemma-sized vocabulary) at rate 10,
with the randomized SVD and with one AE epoch; prints wall times and the peak resident memory
(`resource.getrusage`), which must stay under 3x the table's bytes.

    .venv/bin/python bench/compress_scale.py [--rows 262144] [--features 2048] [--epochs 1]

The table is made on device in row chunks (a low-rank part plus noise), never as a numpy
copy: the one `[V, d]` array in the process is the table itself, plus the permuted copy an
AE epoch draws its batches from.
"""
import argparse
import os
import resource
import sys
import time

# jax reads XLA_FLAGS when its backend starts, not on import: main() sets them first
from dirjax.runtime import FAST_CPU_XLA_FLAGS as FAST_CPU_FLAGS


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def synthetic_table(rows, features, chunk=4096, seed=0):
    """`[rows, features]` fp32: rank-64 signal with a decaying spectrum plus 5% noise."""
    import jax
    import jax.numpy as jnp
    key_m, key_rows = jax.random.split(jax.random.PRNGKey(seed))
    mix = jax.random.normal(key_m, (64, features)) * (0.9 ** jnp.arange(64))[:, None]

    @jax.jit
    def make():
        def block(i):
            k1, k2 = jax.random.split(jax.random.fold_in(key_rows, i))
            return (jax.random.normal(k1, (chunk, 64)) @ mix
                    + 0.05 * jax.random.normal(k2, (chunk, features)))
        return jax.lax.map(block, jnp.arange(rows // chunk)).reshape(rows, features)

    assert rows % chunk == 0
    return jax.block_until_ready(make())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=262144)
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--xla-flags", default=FAST_CPU_FLAGS)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import jax

    from dirjax.compress import compress, rank_for_rate

    gib = 2 ** 30
    tic = time.perf_counter()
    table = synthetic_table(args.rows, args.features)
    nbytes = table.size * 4
    k = rank_for_rate(args.rows, args.features, args.rate)
    print(f"table {args.rows} x {args.features} fp32 = {nbytes / gib:.2f} GiB, made in "
          f"{time.perf_counter() - tic:.1f} s; rate {args.rate:g} -> rank {k}; "
          f"peak RSS so far {peak_rss_bytes() / gib:.2f} GiB")

    tic = time.perf_counter()
    svd = compress(table, rank=k, method="svd")
    jax.block_until_ready(svd.codes[...])
    print(f"randomized SVD: {time.perf_counter() - tic:.1f} s (with metrics), "
          f"cos_mean {svd.metrics['cos_mean']:.4f}, "
          f"rel_frobenius {svd.metrics['rel_frobenius']:.4f}; "
          f"peak RSS {peak_rss_bytes() / gib:.2f} GiB")
    del svd

    log = []
    tic = time.perf_counter()
    emb = compress(table, rank=k, method="ae", epochs=args.epochs, batch_size=args.batch_size,
                   log=log)
    print(f"AE {args.epochs} epoch(s), batch {args.batch_size}: {time.perf_counter() - tic:.1f} s "
          f"in all, {sum(r['seconds'] for r in log):.1f} s in epochs, "
          f"cos_mean {emb.metrics['cos_mean']:.4f}; peak RSS {peak_rss_bytes() / gib:.2f} GiB")
    peak = peak_rss_bytes()
    print(f"peak RSS {peak / gib:.2f} GiB = {peak / nbytes:.2f}x the table "
          f"({'under' if peak < 3 * nbytes else 'OVER'} the 3x target)")


if __name__ == "__main__":
    main()
