"""Throughput of the fine-tuning step (examples/s) on real GLUE batches, and what a run costs.

    .venv/bin/python bench/finetune_speed.py [--model minilm-l6] [--task rte] [--steps 8]
        [--methods original,svd] [--dtypes float32] [--data-dir ../shared/data]

For each embedding (the original dense table, or SVD at `--rate`, frozen codes) and compute
dtype: `--steps` real length-grouped micro-batches of `--batch` examples (max length 128,
dynamic padding) run once to compile, then again timed. Prints examples/s, real tokens/s,
the compile time, and the estimated wall time of one epoch on the task's train set and of
the whole sweep (3 epochs x methods x seeds). On a shared CPU the figures vary with the load.

    .venv/bin/python bench/finetune_speed.py --model bert-base --random  # bert-base-sized,
        random weights (no download): the GPU measurement of fine-tuning throughput
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from dirjax import finetune as ft
from dirjax.data import glue
from dirjax.evaluate.batching import length_grouped_order, pad_batch
from dirjax.models.heads import SequenceHead


def backbone(name: str, random: bool):
    """(model, tokenizer); `random`: a bert-base-sized BERT with random weights and the
    bert-base-uncased vocabulary from the shared tokenizer files."""
    if not random:
        from dirjax import load_model
        return load_model(name)
    from transformers import BertTokenizerFast

    from dirjax.models.bert import Bert, BertConfig
    tok = BertTokenizerFast(args.data_dir + "/tokenizers/bert-base-uncased/vocab.txt")
    return Bert(BertConfig(pooler=True, mlm_head=False), rngs=nnx.Rngs(0)), tok


def measure(method: str, dtype: str, data: glue.Examples, model, tok) -> dict:
    if method != "original":
        from dirjax import swap_embedding
        from dirjax.compress import compress
        model = swap_embedding(model, compress(model.embedding.table(), rate=args.rate,
                                               method=method, metrics=False))
    head = SequenceHead(model, 2, rngs=nnx.Rngs(0))
    cfg = ft.TrainConfig(batch_size=args.batch, micro_batch_size=args.batch,
                         compute_dtype=dtype, epochs=1)
    ids, types = ft.encode_pairs(tok, data, 128)
    order = length_grouped_order(np.asarray(list(map(len, ids))), args.batch,
                                    np.random.default_rng(0))[:args.steps]
    batches = [pad_batch([ids[i] for i in b], [types[i] for i in b], args.batch,
                            cfg.pad_multiple, labels=data.labels[b]) for b in order]
    graphdef, trainable, frozen = ft.split(head, cfg.embedding)
    tx = ft.optimizer(cfg, 100)
    step = ft.make_step(graphdef, ft.sequence_loss(False), tx, jax.numpy.dtype(dtype))
    opt = tx.init(trainable)
    key = jax.random.key(0)

    def run_all():
        nonlocal trainable, opt
        for b in batches:
            trainable, opt, loss = step(trainable, opt, frozen, b, key)
        jax.block_until_ready(loss)

    t0 = time.perf_counter()
    run_all()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_all()
    s = time.perf_counter() - t0
    n = sum(int(b["weight"].sum()) for b in batches)
    tokens = sum(int(b["mask"].sum()) for b in batches)
    return {"method": method, "dtype": dtype, "examples_per_s": n / s, "tokens_per_s": tokens / s,
            "padded_tokens_per_s": sum(b["ids"].size for b in batches) / s,
            "first_pass_s": compile_s}


def main():
    data = glue.load(args.task, "train", args.data_dir)
    model, tok = backbone(args.model, args.random)
    print(f"{args.model}{' (random)' if args.random else ''} on {args.task} train "
          f"({len(data)} examples), batch {args.batch}, {args.steps} steps, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    for method in args.methods.split(","):
        for dtype in args.dtypes.split(","):
            r = measure(method, dtype, data, model, tok)
            epoch_s = len(data) / r["examples_per_s"]
            print(f"{method:9s} {dtype:9s} {r['examples_per_s']:8.1f} ex/s "
                  f"{r['tokens_per_s']:9.0f} tok/s  "
                  f"first pass (compile) {r['first_pass_s']:.1f} s  "
                  f"epoch ~{epoch_s / 60:.1f} min  "
                  f"3 epochs x 3 seeds ~{9 * epoch_s / 60:.0f} min", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--random", action="store_true", help="bert-base-sized random weights")
    p.add_argument("--task", default="rte")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--methods", default="original,svd")
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--data-dir", default="../shared/data")
    args = p.parse_args()
    main()
