"""Fine-tune a (compressed-embedding) model on GLUE or SQuAD v1.1 and score dev after each epoch.

The sweep over tasks, methods, rates and seeds is the "finetune" job of `dirjax.experiment`.

The loop, top to bottom:
  1. the model's parameters are split into `trainable` and `frozen` by the embedding
     treatment (below); frozen arrays are never differentiated nor updated, so they stay
     bit-identical;
  2. one jit-compiled step (forward, backward, AdamW with linear warm-up/decay, gradient
     clipping, optional accumulation through optax.MultiSteps) runs on a
     `Mesh(devices, ("data",))`: parameters and optimizer state replicated, the batch split
     over "data"; the compiler inserts the gradient all-reduce;
  3. batches are padded dynamically (to a multiple of `pad_multiple` tokens) and grouped by
     length, so short sentences do not pay for long ones;
  4. after every epoch: evaluation on dev, an Orbax checkpoint (trainable params, optimizer
     state, epoch) and the epoch's metrics; a rerun with the same directory resumes after the
     last finished epoch and gives the same result as an uninterrupted run.

Embedding treatments (the paper fine-tunes AE models with frozen codes):
  full          every parameter trains;
  frozen        the whole token embedding is frozen;
  frozen_codes  a low-rank embedding's codes `[V, k]` are frozen, its decoder weight `[k, d]`
                and bias `[d]` train. SVD gets the same treatment (codes = U_k S_k,
                decoder = V_k^T), so the AE/SVD comparison is fair. A dense table has no
                codes: there `frozen_codes` is the same as `full`.
A quantised embedding (quant*, vq) holds its codes, scales and codebooks as plain Variables,
not Params: under every treatment it stays as stored (the fine-tuned model ships those bytes).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dirjax.data.glue import Examples, get_task
from dirjax.data.squad import Example
from dirjax.errors import ConfigError
from dirjax.evaluate import glue, squad
from dirjax.evaluate.batching import eval_order, length_grouped_order, pad_batch
from dirjax.models.heads import SequenceHead, SpanHead

TREATMENTS = ("frozen_codes", "frozen", "full")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings (defaults: the paper's GLUE settings for bert-base)."""
    lr: float = 2e-5
    batch_size: int = 32          # effective batch (per optimizer update)
    micro_batch_size: int = 32    # per jit step; batch_size / micro_batch_size steps accumulate
    epochs: int = 3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-8
    embedding: str = "frozen_codes"
    compute_dtype: str = "float32"    # "bfloat16": bf16 forward/backward, fp32 master weights
    eval_batch_size: int = 64
    pad_multiple: int = 32            # dynamic padding granularity (few shapes -> few compiles)
    dropout: float = 0.1

    @property
    def accumulation(self) -> int:
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of "
                              f"micro_batch_size {self.micro_batch_size}")
        return self.batch_size // self.micro_batch_size


def train_config(cfg) -> TrainConfig:
    """A TrainConfig from any object/ConfigDict with (a subset of) its fields."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
    return TrainConfig(**{f.name: get(f.name, f.default) for f in dataclasses.fields(TrainConfig)})


# ---------------------------------------------------------------- parameters

def embedding_of(model):
    """The token-embedding module of a head (`model.backbone.embedding`) or a bare model."""
    return getattr(model, "backbone", model).embedding


def frozen_filter(model, treatment: str):
    """An NNX filter matching the Variables `treatment` freezes (by identity, so a tied
    output head that shares the embedding is frozen with it)."""
    if treatment not in TREATMENTS:
        raise ConfigError(f"embedding treatment must be one of {TREATMENTS}, got {treatment!r}")
    emb = embedding_of(model)
    if treatment == "full":
        frozen = []
    elif treatment == "frozen":
        frozen = [v for _, v in nnx.iter_graph(emb) if isinstance(v, nnx.Variable)]
    else:  # frozen_codes; a dense table has no codes and trains whole
        frozen = [emb.codes] if hasattr(emb, "codes") else []
    ids = {id(v) for v in frozen}
    return lambda path, x: id(x) in ids


def split(model, treatment: str):
    """(graphdef, trainable Params, everything else) of `model`."""
    frozen = frozen_filter(model, treatment)
    return nnx.split(model, nnx.All(nnx.Param, nnx.Not(frozen)), ...)


def count(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def cast(tree, dtype):
    """Floating arrays of `tree` in `dtype` (the bf16 compute copy; gradients flow through)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def optimizer(cfg: TrainConfig, updates: int) -> optax.GradientTransformation:
    """AdamW, linear warm-up then linear decay to 0 over `updates` steps, clipping, no decay on
    biases and LayerNorm (vectors), accumulated over `cfg.accumulation` micro-steps."""
    warm = int(cfg.warmup_ratio * updates)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(warm, 1)),
         optax.linear_schedule(cfg.lr, 0.0, max(updates - warm, 1))], [warm])
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(schedule, eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                    mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)))
    if cfg.accumulation > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulation)
    return tx


# ---------------------------------------------------------------- losses

def sequence_loss(regression: bool):
    """Weighted mean cross-entropy (or squared error) of a SequenceHead on a batch."""
    def loss(model, batch, key):
        out = model(batch["ids"], batch["mask"], batch["token_type_ids"], dropout_key=key)
        out = out.astype(jnp.float32)
        if regression:
            per = (out[:, 0] - batch["labels"]) ** 2
        else:
            per = optax.softmax_cross_entropy_with_integer_labels(out, batch["labels"])
        return jnp.sum(per * batch["weight"]) / jnp.maximum(jnp.sum(batch["weight"]), 1.0)
    return loss


def span_loss(model, batch, key):
    """Mean of start and end cross-entropies of a SpanHead (padding positions excluded)."""
    start, end = model(batch["ids"], batch["mask"], batch["token_type_ids"], dropout_key=key)
    pad = batch["mask"] == 0

    def ce(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(
            jnp.where(pad, -1e9, logits.astype(jnp.float32)), y)

    per = 0.5 * (ce(start, batch["start"]) + ce(end, batch["end"]))
    return jnp.sum(per * batch["weight"]) / jnp.maximum(jnp.sum(batch["weight"]), 1.0)


# ---------------------------------------------------------------- batches

# ---------------------------------------------------------------- the loop

def make_step(graphdef, loss_fn: Callable, tx: optax.GradientTransformation, dtype=jnp.float32):
    """The jit-compiled step (trainable, opt_state, frozen, batch, key) -> (trainable,
    opt_state, loss). Sharding follows the inputs: replicated parameters and a batch split
    over "data" make the compiler reduce the gradients across devices."""
    def loss_of(t, f, batch, key):
        return loss_fn(nnx.merge(graphdef, cast(t, dtype), cast(f, dtype)), batch, key)

    @jax.jit
    def step(t, opt, f, batch, key):
        loss, grads = jax.value_and_grad(loss_of)(t, f, batch, key)
        upd, opt = tx.update(grads, opt, t)
        return optax.apply_updates(t, upd), opt, loss
    return step


def fit(model, loss_fn: Callable, train_batches: Callable[[int], Iterator[dict]],
        evaluate: Callable[[Callable], dict], cfg: TrainConfig, *, updates: int, seed: int,
        mesh: Mesh | None = None, ckpt_dir: str | os.PathLike | None = None,
        log: Callable = print) -> list[dict]:
    """Train `model` (a head) for `cfg.epochs`; returns one metrics dict per epoch.

    train_batches(epoch) yields padded micro-batches; evaluate(predict) scores dev, where
    predict(batch) returns the head's outputs as numpy. `updates` = optimizer updates in
    total (for the schedule). The model is updated in place with the trained parameters.
    """
    mesh = mesh or Mesh(jax.devices(), ("data",))
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, trainable, frozen = split(model, cfg.embedding)
    tx = optimizer(cfg, updates)
    dtype = jnp.dtype(cfg.compute_dtype)
    trainable, frozen = jax.device_put((trainable, frozen), rep)
    opt_state = jax.device_put(tx.init(trainable), rep)

    step = make_step(graphdef, loss_fn, tx, dtype)

    @jax.jit
    def predict_step(t, f, batch):
        m = nnx.merge(graphdef, cast(t, dtype), cast(f, dtype))
        out = m(batch["ids"], batch["mask"], batch["token_type_ids"])
        return jax.tree.map(lambda x: x.astype(jnp.float32), out)

    def predict(batch):
        return jax.tree.map(np.asarray,
                            predict_step(trainable, frozen, jax.device_put(batch, data)))

    ckpt = checkpointer(ckpt_dir)
    history, start = [], 0
    if ckpt is not None and ckpt.latest_step() is not None:
        trainable, opt_state, history = restore(ckpt, trainable, opt_state, rep)
        start = len(history)
        log(f"resumed after epoch {start}")
    key = jax.random.key(seed)
    for epoch in range(start, cfg.epochs):
        t0, n, losses = time.perf_counter(), 0, []
        for i, batch in enumerate(train_batches(epoch)):
            k = jax.random.fold_in(jax.random.fold_in(key, epoch), i)
            trainable, opt_state, loss = step(trainable, opt_state, frozen,
                                              jax.device_put(batch, data), k)
            losses.append(loss)
            n += int(batch["weight"].sum())
        # dispatch is asynchronous: wait for the last step before reading the clock
        jax.block_until_ready((trainable, opt_state))
        train_s = time.perf_counter() - t0
        metrics = dict(evaluate(predict), epoch=epoch + 1, train_loss=float(np.mean(losses)),
                       train_seconds=train_s, examples_per_s=n / train_s,
                       seconds=time.perf_counter() - t0)
        history.append(metrics)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in metrics.items()))
        if ckpt is not None:
            ckpt.save(epoch + 1, args=_args(trainable, opt_state, history))
            ckpt.wait_until_finished()
    nnx.update(model, jax.device_get(trainable))
    return history


def checkpointer(ckpt_dir):
    if ckpt_dir is None:
        return None
    import orbax.checkpoint as ocp
    return ocp.CheckpointManager(Path(ckpt_dir).absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1))


def _args(trainable, opt_state, history):
    import orbax.checkpoint as ocp
    return ocp.args.Composite(
        state=ocp.args.StandardSave({"params": nnx.to_pure_dict(trainable), "opt": opt_state}),
        history=ocp.args.JsonSave(history))


def restore(ckpt, trainable, opt_state, sharding):
    """(trainable, opt_state, history) of the latest checkpoint, placed like the live ones."""
    import orbax.checkpoint as ocp
    target = {"params": nnx.to_pure_dict(trainable), "opt": opt_state}
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), target)
    got = ckpt.restore(ckpt.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    nnx.replace_by_pure_dict(trainable, got.state["params"])
    return trainable, got.state["opt"], list(got.history)


# ---------------------------------------------------------------- GLUE

def encode_pairs(tokenizer, ex: Examples, max_length: int):
    enc = tokenizer(ex.text_a, ex.text_b, truncation=True, max_length=max_length,
                    return_token_type_ids=True)
    return enc["input_ids"], enc["token_type_ids"]


def finetune_glue(backbone, tokenizer, task: str, cfg: TrainConfig, *, train: Examples,
                  dev: dict[str, Examples], seed: int = 0, max_length: int = 128,
                  pooling: str = "auto", mesh=None, ckpt_dir=None, log=print) -> list[dict]:
    """Fine-tune a SequenceHead on `backbone` for GLUE `task`; dev = {split name: examples}.

    Returns per-epoch dicts with every metric of every dev split, keyed `<split>/<metric>`.
    """
    t = get_task(task)
    head = SequenceHead(backbone, t.num_labels, pooling=pooling, dropout_rate=cfg.dropout,
                        rngs=nnx.Rngs(seed))
    n_dev = len(mesh.devices.flat) if mesh is not None else jax.device_count()
    micro = _round_up(cfg.micro_batch_size, n_dev)
    ids, types = encode_pairs(tokenizer, train, max_length)
    lengths = np.asarray(list(map(len, ids)))
    dev_enc = {s: encode_pairs(tokenizer, e, max_length) for s, e in dev.items()}

    def train_batches(epoch):
        rng = np.random.default_rng([seed, epoch])
        for b in length_grouped_order(lengths, micro, rng):
            yield pad_batch([ids[i] for i in b], [types[i] for i in b], micro,
                            cfg.pad_multiple, labels=train.labels[b])

    def evaluate(predict):
        out = {}
        for split_name, (d_ids, d_types) in dev_enc.items():
            outputs = np.zeros((len(d_ids), t.num_labels), np.float32)
            eb = _round_up(cfg.eval_batch_size, n_dev)
            for b in eval_order(np.asarray(list(map(len, d_ids))), eb):
                o = predict(pad_batch([d_ids[i] for i in b], [d_types[i] for i in b], eb,
                                      cfg.pad_multiple))
                outputs[b] = o[:len(b)]
            scores = glue.score(t, glue.predictions(t, outputs), dev[split_name].labels)
            out.update({f"{split_name}/{m}": v for m, v in scores.items()})
        return out

    n_micro = math.ceil(len(ids) / micro)
    updates = cfg.epochs * math.ceil(n_micro / cfg.accumulation)
    history = fit(head, sequence_loss(t.is_regression), train_batches, evaluate, cfg,
                  updates=updates, seed=seed, mesh=mesh, ckpt_dir=ckpt_dir, log=log)
    return history


# ---------------------------------------------------------------- SQuAD

def finetune_squad(backbone, tokenizer, cfg: TrainConfig, *, train: list[Example],
                   dev: list[Example], seed: int = 0, max_length: int = 384,
                   stride: int = 128, n_best: int = 20, max_answer_length: int = 30,
                   mesh=None, ckpt_dir=None, log=print) -> list[dict]:
    """Fine-tune a SpanHead; per-epoch dicts with dev `exact_match` and `f1` (percent)."""
    head = SpanHead(backbone, rngs=nnx.Rngs(seed))
    n_dev = len(mesh.devices.flat) if mesh is not None else jax.device_count()
    micro = _round_up(cfg.micro_batch_size, n_dev)
    tr = squad.featurize(train, tokenizer, max_length, stride)
    dv = squad.featurize(dev, tokenizer, max_length, stride)
    lengths = np.asarray(list(map(len, tr.input_ids)))

    def train_batches(epoch):
        rng = np.random.default_rng([seed, epoch])
        for b in length_grouped_order(lengths, micro, rng):
            yield pad_batch([tr.input_ids[i] for i in b], [tr.token_type_ids[i] for i in b],
                            micro, cfg.pad_multiple, start=tr.start[b], end=tr.end[b])

    def evaluate(predict):
        starts, ends = [None] * len(dv), [None] * len(dv)
        eb = _round_up(cfg.eval_batch_size, n_dev)
        for b in eval_order(np.asarray(list(map(len, dv.input_ids))), eb):
            s, e = predict(pad_batch([dv.input_ids[i] for i in b],
                                     [dv.token_type_ids[i] for i in b], eb, cfg.pad_multiple))
            for j, i in enumerate(b):
                starts[i], ends[i] = s[j], e[j]
        preds = squad.decode(dv, starts, ends, dev, n_best, max_answer_length)
        return squad.evaluate(dev, preds)

    n_micro = math.ceil(len(tr) / micro)
    updates = cfg.epochs * math.ceil(n_micro / cfg.accumulation)
    return fit(head, span_loss, train_batches, evaluate, cfg, updates=updates, seed=seed,
               mesh=mesh, ckpt_dir=ckpt_dir, log=log)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m
