"""The one job runner: `run_experiment(config, workdir)`, for both jobs of `dirjax.config`.

    from dirjax.experiment import base_config, run_experiment
    config = base_config()          # or base_config("finetune"), or a configs/*.py get_config()
    config.rates = (5.0, 10.0)
    rows = run_experiment(config, "runs/mine")

A config travels one way: check -> data -> model -> compression -> evaluate or fine-tune ->
results. In that order, so that a mistake costs nothing:
  1. `check_config` judges every field, method and method option; the work directory must be
     a writable folder; the evaluation (and calibration) data are read. Nothing is loaded yet.
  2. The work directory is locked (a second run on it is refused in one line), the model is
     loaded and every low-rank rate is checked against its table.
  3. Each unit of work (eval: a method x rate x output; finetune: a seed x task x method x
     rate) takes its compression from the work directory's cache (`compress/cache.py`, keyed
     by the table's bytes and everything else that changes it) or makes it, then is scored.
  4. Each finished unit is written to results.json / results.md / plot.png at once
     (`report.Results`): a row carries a key that digests everything that made it (the
     model's weights, tokenizer, data, settings, compression), a rerun reuses exactly the rows
     whose key it would compute again, and rows are never dropped.
"""
from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from dirjax import data as data_lib
from dirjax import finetune as ft

# saved.load_model: a saved folder or a source (through dirjax.models.load_model, which tests
# replace)
from dirjax import report, saved
from dirjax.compress import compress, get_method, rank_for_rate
from dirjax.compress.cache import (
    CompressionCache,
    compression_key,
    digest,
    model_fingerprint,
    tokenizer_fingerprint,
)
from dirjax.compress.calib import collect
from dirjax.config import EVAL_TASKS, base_config, check_config
from dirjax.embedding import compression_rate, swap_embedding
from dirjax.errors import ConfigError, DataError
from dirjax.evaluate import (
    causal_perplexity,
    mask_lines,
    mlm_perplexity,
    sts_spearman,
    tokenize_stream,
)
from dirjax.evaluate.perplexity import bos_of
from dirjax.models.generate import generate

FP32_BYTES = 4
RESULT_ONLY_OPTIONS = ("workdir", "progress", "calibration")  # options that do not change a result

# A row's key digests its job's settings: every config field, but those below, each left out
# because it changes no row or is keyed by what it gives (a field added to the config is in
# the keys unless it is listed here). Field -> why.
NOT_SETTINGS = {
    "job": "the key holds the job itself",
    "model": "the key holds the weights' digest, whatever the model's name or path",
    "tokenizer": "the key holds the tokenizer's definition, whatever its name",
    "data_dir": "the key holds the data's digest, wherever they were read",
    "methods": "a row is one method: the key holds its compression's key",
    "rates": "a row is one rate: the key holds its compression's key",
    "method_options": "the compression's key holds the options that change it",
    "progress": "display only",
}


# ---------------------------------------------------------------------------- work directory

def check_workdir(workdir: Path) -> None:
    """ConfigError unless `workdir` is (or can be made as) a writable folder. Creates nothing."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} is a file, not a folder")
    existing = workdir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"workdir {workdir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"workdir {workdir} is not writable ({existing})")


class WorkdirLock:
    """An exclusive `flock` on `<workdir>/.lock` for the run's lifetime (the kernel drops it when
    the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, workdir: Path):
        self.path = workdir / ".lock"
        self.file = None

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+")
        except OSError as e:
            raise ConfigError(f"cannot use workdir {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise ConfigError(f"workdir {self.path.parent} is in use by another run "
                              f"(pid {holder}); wait for it or use another workdir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# ---------------------------------------------------------------------------- the jobs

def settings(c, left_out: dict) -> dict:
    """The fields of config `c` that a row's key holds: all but NOT_SETTINGS and `left_out`."""
    return {n: plain(c[n]) for n in c.keys() if n not in NOT_SETTINGS and n not in left_out}


class EvalJob:
    """Score the original model and every (method, rate, output) on one task.

    Every job answers the same calls, in this order: read_data(), check_model(model),
    prepare(model, tokenizer), units(), settings(), run(model, emb, unit, common) -> rows,
    finish(model, tokenizer, rows, compressions); `doing` names its work on the progress bar.
    """
    doing = "evaluating"
    NOT_SETTINGS = {
        "bos": "the key holds whether a BOS is used (what 'auto' gives for this tokenizer)",
        "outputs": "a row is one output: its unit holds it",
        "prompt": "continuations go to samples.md, not to rows",
        "prompt_tokens": "continuations go to samples.md, not to rows",
    }
    # Fields keyed only away from their default: added after eval rows existed, whose default
    # computes what those rows computed, so today's keys stay as they were. Field -> default.
    KEYED_WHEN_SET = {"compute_dtype": "float32"}

    def __init__(self, c, workdir: Path):
        self.c, self.workdir = c, workdir
        self.metric = EVAL_TASKS[c.task][0]
        self.dataset = f"{c.dataset}/{data_lib.SPLIT_ALIASES.get(c.split, c.split)}"
        self.bos = None    # set by prepare(): whether windows start with a BOS

    def settings(self) -> dict:
        at_default = {n: d for n, d in self.KEYED_WHEN_SET.items() if self.c[n] == d}
        return settings(self.c, self.NOT_SETTINGS | at_default) | {"bos": self.bos}

    def read_data(self) -> None:
        c = self.c
        if c.task == "sts":
            pairs = data_lib.load_sts(c.dataset, c.split, c.data_dir or None)
            if c.max_examples:
                pairs = data_lib.SentencePairs(*(x[:c.max_examples] for x in
                                                 (pairs.sentence1, pairs.sentence2, pairs.score)))
            self.data = pairs
            self.data_digest = digest(pairs.sentence1, pairs.sentence2, pairs.score)
            return
        text = data_lib.load_text(c.dataset, c.split, c.data_dir or None)
        if not text.strip():
            raise DataError(f"{c.dataset} [{c.split}] is empty")
        self.data, self.data_digest = text, digest(text)

    def check_model(self, model) -> None:
        c, objective = self.c, getattr(model, "objective", "causal")
        if c.task in ("causal_ppl", "mlm_ppl") and model.out_embedding is None:
            raise ConfigError(f"model {c.model} has no LM head: task {c.task} needs one "
                              "(use task 'sts' for an encoder)")
        if c.task == "causal_ppl" and objective != "causal":
            raise ConfigError(f"model {c.model} is a masked LM: use task 'mlm_ppl'")
        if c.task == "mlm_ppl" and objective != "masked":
            raise ConfigError(f"model {c.model} is not a masked LM: use task 'causal_ppl'")

    def prepare(self, model, tokenizer) -> None:
        """The scorer `model -> {"value", "tokens", ...}` on the tokenised data."""
        c, data = self.c, self.data
        self.outputs = c.outputs if model.tied and model.out_embedding is not None else (None,)
        self.bos = None
        if c.task == "causal_ppl":
            ids = tokenize_stream(tokenizer, data, c.max_tokens)
            bos_id = bos_of(tokenizer) if c.bos == "auto" else \
                tokenizer.bos_token_id if c.bos == "yes" else None
            if c.bos == "yes" and bos_id is None:
                raise ConfigError(f"config.bos is yes but the tokenizer of {c.model} has no BOS")
            self.bos = bos_id is not None

            def score(m):
                out = causal_perplexity(m, ids, max_length=c.max_length, stride=c.stride or None,
                                        batch_size=c.batch_size, progress=c.progress,
                                        bos_id=bos_id, compute_dtype=c.compute_dtype)
                return {"value": out["ppl"], "tokens": out["tokens"], "nll": out["nll"],
                        "bos": bos_id is not None}
        elif c.task == "mlm_ppl":
            examples = mask_lines(tokenizer, data_lib.text_lines(data),
                                  probability=c.mlm_probability, min_tokens=c.mlm_min_tokens,
                                  max_length=c.max_length, seed=c.seed)
            if c.max_examples:
                examples = examples[:c.max_examples]

            def score(m):
                out = mlm_perplexity(m, examples, batch_size=c.batch_size, progress=c.progress,
                                     compute_dtype=c.compute_dtype)
                return {"value": out["ppl"], "tokens": out["tokens"], "nll": out["nll"],
                        "examples": len(examples)}
        else:
            def score(m):
                out = sts_spearman(m, tokenizer, data, batch_size=c.batch_size,
                                   max_length=c.max_length, progress=c.progress,
                                   compute_dtype=c.compute_dtype)
                return {"value": 100 * out["spearman"], "tokens": out["tokens"],
                        "examples": out["pairs"]}
        self.score = score

    def units(self):
        """(method, rate, unit fields) in order; "original" first unless placed in methods."""
        c = self.c
        methods = c.methods if "original" in c.methods else ("original", *c.methods)
        for method in methods:
            if method == "original":
                yield "original", 1.0, {"output": None}
                continue
            for rate in c.rates:
                for output in self.outputs:
                    yield method, rate, {"output": output}

    def run(self, model, emb, unit: dict, common: dict) -> list[dict]:
        start = time.perf_counter()
        variant = model if emb is None else swap_embedding(model, emb,
                                                           output=unit["output"] or "tied")
        out = self.score(variant)
        return [{**common, "task": self.c.task, "dataset": self.dataset, "metric": self.metric,
                 **unit, **out, "seconds": time.perf_counter() - start}]

    def finish(self, model, tokenizer, rows: list[dict], compressions) -> None:
        if self.c.prompt:
            write_samples(self.c, self.workdir, model, tokenizer, rows, compressions)


class FinetuneJob:
    """Fine-tune the original model and every (method, rate) on GLUE tasks / SQuAD, per seed
    (the calls of `EvalJob`); checkpoints under <workdir>/checkpoints/."""
    doing = "fine-tuning"
    NOT_SETTINGS = {
        "tasks": "a row is one task: its unit holds it",
        "seeds": "a row is one seed: its unit holds it",
        "reference": "adds the original model's rows, changes none",
    }
    SQUAD_ONLY = {n: "SQuAD-only: changes no GLUE run"
                  for n in ("stride", "n_best", "max_answer_length", "train_file")}

    def __init__(self, c, workdir: Path):
        self.c, self.checkpoints = c, workdir / "checkpoints"
        self.outputs = (None,)

    def settings(self) -> dict:
        squad_only = {} if "squad" in self.c.tasks else self.SQUAD_ONLY
        return settings(self.c, self.NOT_SETTINGS | squad_only)

    def read_data(self) -> None:
        glue, squad = data_lib.glue, data_lib.squad
        c = self.c
        n_train, n_dev = c.max_train_examples or None, c.max_eval_examples or None
        self.data, self.digests = {}, {}
        for task in c.tasks:
            if task == "squad":
                train = squad.load_split("train", c.data_dir or None, c.train_file)[:n_train]
                dev = squad.load_split("dev", c.data_dir or None)[:n_dev]
                self.digests[task] = digest([e.__dict__ for e in train], [e.__dict__ for e in dev])
            else:
                t = glue.get_task(task)
                train = glue.load(t, "train", c.data_dir or None)
                dev = {s: glue.load(t, s, c.data_dir or None) for s in t.dev_splits}
                if n_train:
                    train = train.take(n_train)
                if n_dev:
                    dev = {s: e.take(n_dev) for s, e in dev.items()}
                self.digests[task] = digest(*[(e.text_a, e.text_b, e.labels)
                                              for e in (train, *dev.values())])
            self.data[task] = (train, dev)
        self.data_digest = digest(self.digests)

    def check_model(self, model) -> None:
        if not hasattr(model, "encode"):
            raise ConfigError(f"model {self.c.model} cannot be fine-tuned (no encode())")
        if self.c.pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise ConfigError(f"model {self.c.model} has no pooler; use pooling 'cls' or 'mean'")

    def prepare(self, model, tokenizer) -> None:
        self.tokenizer = tokenizer

    def units(self):
        c = self.c
        methods = c.methods if "original" in c.methods or not c.reference else (
            "original", *c.methods)
        # seeds outermost: every task and method gets a first figure early
        for seed in c.seeds:
            for task in c.tasks:
                for method in methods:
                    for rate in ([1.0] if method == "original" else c.rates):
                        yield method, rate, {"task": task, "seed": seed}

    def run(self, model, emb, unit: dict, common: dict) -> list[dict]:
        c, task, seed = self.c, unit["task"], unit["seed"]
        cfg = ft.train_config(c)
        # a copy (shares arrays): fit() updates its backbone in place
        backbone = nnx.merge(*nnx.split(model)) if emb is None else swap_embedding(model, emb)
        train, dev = self.data[task]
        name = f"{task}-{common['method']}-rate{common['rate']:g}-seed{seed}-{common['key'][:10]}"
        ckpt = self.checkpoints / name
        log = (lambda msg: tqdm.write(f"[{name}] {msg}")) if c.progress else (lambda msg: None)
        start = time.perf_counter()
        if task == "squad":
            history = ft.finetune_squad(backbone, self.tokenizer, cfg, train=train, dev=dev,
                                        seed=seed, max_length=c.max_length, stride=c.stride,
                                        n_best=c.n_best, max_answer_length=c.max_answer_length,
                                        ckpt_dir=ckpt, log=log)
        else:
            history = ft.finetune_glue(backbone, self.tokenizer, task, cfg, train=train, dev=dev,
                                       seed=seed, max_length=c.max_length, pooling=c.pooling,
                                       ckpt_dir=ckpt, log=log)
        seconds = time.perf_counter() - start
        last = history[-1]
        base = {**common, **unit, "lr": c.lr, "epochs": last["epoch"], "embedding": c.embedding,
                "examples_per_s": last["examples_per_s"], "train_loss": last["train_loss"],
                "history": history, "seconds": seconds, "checkpoint_dir": str(ckpt)}
        rows = []
        for key, value in last.items():
            if task == "squad" and key in ("exact_match", "f1"):
                split_name, metric = "dev", key
            elif "/" in key:
                split_name, _, metric = key.rpartition("/")
            else:
                continue
            dataset = "squad/dev" if task == "squad" else f"glue/{task}/{split_name}"
            rows.append({**base, "key": f"{common['key']}/{split_name}/{metric}",
                         "unit": common["key"], "dataset": dataset, "metric": metric,
                         "value": value})
        return rows

    def finish(self, model, tokenizer, rows: list[dict], compressions) -> None:
        pass


JOBS = {"eval": EvalJob, "finetune": FinetuneJob}


# ---------------------------------------------------------------------------- compression

def compression_options(c, method: str) -> dict:
    """The options of `method` that change its result (those the cache key holds)."""
    return {k: plain(v) for k, v in (c.method_options.get(method) or {}).items()
            if k not in RESULT_ONLY_OPTIONS}


def plain(x):
    return x.to_dict() if hasattr(x, "to_dict") else x


class Compressions:
    """The compressions of one run: each (method, rate) made or found once, in the cache."""

    def __init__(self, c, workdir: Path, model, tokenizer, model_fp: str, calib_texts: dict):
        self.c, self.model, self.tokenizer = c, model, tokenizer
        self.model_fp, self.calib_texts = model_fp, calib_texts
        self.cache = CompressionCache(workdir / "embeddings")
        self.table = model.embedding.table()
        self.table_digest = digest(self.table)
        self.done: dict[tuple, tuple] = {}
        # hidden states are taken as the model is used: after a BOS when its tokenizer adds one
        self.bos_id = bos_of(tokenizer)

    def calibration(self, method: str) -> dict | None:
        """What the calibration of `method` depends on (None: it has none)."""
        spec = plain((self.c.method_options.get(method) or {}).get("calibration"))
        if not spec:
            return None
        out = {"spec": dict(spec), "text": digest(self.calib_texts[method]),
               "model": self.model_fp, "tokenizer": tokenizer_fingerprint(self.tokenizer)}
        if self.bos_id is not None and spec.get("n_hidden"):   # keys without BOS unchanged
            out["bos_id"] = self.bos_id
        return out

    @functools.cache
    def calibration_arrays(self, method: str) -> dict:
        spec = plain(self.c.method_options[method]["calibration"])
        return collect(self.model, self.tokenizer, self.calib_texts[method],
                       n_hidden=int(spec["n_hidden"]), max_length=int(spec.get("max_length", 512)),
                       bos_id=self.bos_id)

    def key(self, method: str, rate: float, refined: bool = True) -> str:
        """The cache key of (method, rate); refined=False: of the compression an `e2e`
        option starts from (the key the same options without `e2e` have)."""
        options = compression_options(self.c, method)
        if not refined:
            options.pop("e2e", None)
        return compression_key(self.table_digest, method, rate, options,
                               self.calibration(method))

    def get(self, method: str, rate: float):
        """(embedding, compress seconds, reused?) of (method, rate). With an `e2e` option: the
        compression without it (cached under its own key, so refinements of one compression
        share it), refined through the model (its Orbax checkpoints in the cache's train
        folder); the seconds are the refinement's."""
        if (method, rate) in self.done:
            return self.done[method, rate]
        c = self.c
        options = compression_options(c, method)
        e2e = options.pop("e2e", None)

        def make(train_dir: Path):
            kw = dict(options)
            if method == "ae":
                kw.setdefault("workdir", str(train_dir))
                kw.setdefault("progress", c.progress)
            if self.calibration(method) is not None:   # the arrays the method takes (a
                needs = get_method(method).needs       # quant's calibration is e2e's text)
                kw.update({k: v for k, v in self.calibration_arrays(method).items()
                           if k in needs})
            return compress(self.table, rate=rate, method=method, **kw)

        meta = {"model": c.model, "requested_rate": rate,
                "options": plain(c.method_options.get(method) or {}),
                # what dirjax.load_model(model, embedding=DIR) checks
                "table_digest": self.table_digest,
                "table_dtype": jnp.dtype(self.table.dtype).name}
        if e2e is None:
            got = self.cache.get_or_make(method, rate, self.key(method, rate), make, meta)
        else:
            base_meta = {**meta, "options": {k: v for k, v in meta["options"].items()
                                             if k != "e2e"}}
            base, base_seconds, _ = self.cache.get_or_make(
                method, rate, self.key(method, rate, refined=False), make, base_meta)

            def refine(train_dir: Path):
                emb = self.refine(method, base, e2e, train_dir)
                emb.meta = {**emb.meta, "base_compress_seconds": base_seconds}
                return emb

            got = self.cache.get_or_make(method, rate, self.key(method, rate), refine, meta)
        self.done[method, rate] = got
        return got

    def refine(self, method: str, emb, e2e: dict, train_dir: Path):
        """`emb` refined end to end through the model on the method's calibration text
        (dirjax/compress/e2e.py), its reconstruction figures measured again."""
        from dirjax.compress.e2e import refine_through_model
        from dirjax.compress.metrics import reconstruction_metrics
        e2e = dict(e2e)
        tokens, held = int(e2e.pop("tokens")), int(e2e["held_tokens"])
        ids = tokenize_stream(self.tokenizer, self.calib_texts[method], tokens + held)
        out = refine_through_model(self.model, emb, ids, tokens=min(tokens, len(ids)),
                                   workdir=train_dir, progress=self.c.progress,
                                   bos_id=self.bos_id, **e2e)
        out.metrics = {**emb.metrics, **reconstruction_metrics(self.table, out)}
        return out


def embedding_fields(model, emb, output) -> dict:
    """Size fields of a row: the embedding's stored bytes, the whole model's, the rank."""
    v, d = model.config.vocab_size, model.config.hidden_size
    total = sum(int(np.prod(x.shape)) for x in _param_leaves(model))
    # the input table, and an untied head's own table, count in `total`; the compressed
    # embedding replaces the input table (and a tied head's, unless output="original")
    rest = FP32_BYTES * (total - v * d)
    if emb is None:
        return {"rank": None, "embedding_bytes": v * d * FP32_BYTES,
                "model_bytes": rest + v * d * FP32_BYTES, "achieved_rate": 1.0}
    kept_head = v * d * FP32_BYTES if (output == "original" and model.tied) else 0
    return {"rank": getattr(emb, "rank", None), "embedding_bytes": int(emb.storage_bytes()),
            "model_bytes": rest + int(emb.storage_bytes()) + kept_head,
            "achieved_rate": compression_rate(emb, v, d)}


def _param_leaves(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


# ---------------------------------------------------------------------------- the runner

def run_experiment(config, workdir) -> list[dict]:
    """Run `config` (see `dirjax.config`) in `workdir`; return this run's result rows."""
    c = check_config(config if config is not None else base_config())
    workdir = Path(workdir)
    check_workdir(workdir)
    job = JOBS[c.job](c, workdir)
    job.read_data()
    calib_texts = {}   # read now, so a missing calibration file costs nothing
    for method, options in c.method_options.items():
        if spec := plain(options.get("calibration")):
            calib_texts[method] = data_lib.load_text(spec["dataset"], spec["split"],
                                                     c.data_dir or None)
    with WorkdirLock(workdir):
        results = report.Results(workdir)
        return _run_locked(c, workdir, job, calib_texts, results)


def _run_locked(c, workdir: Path, job, calib_texts: dict, results) -> list[dict]:
    model, tokenizer = saved.load_model(c.model, dtype=getattr(jnp, c.dtype),
                                        tokenizer=c.tokenizer or None)
    job.check_model(model)
    v, d = model.config.vocab_size, model.config.hidden_size
    for method in c.methods:
        if method != "original" and get_method(method).low_rank:
            for rate in c.rates:
                rank_for_rate(v, d, rate)
    job.prepare(model, tokenizer)
    model_fp, tok_fp = model_fingerprint(model), tokenizer_fingerprint(tokenizer)
    compressions = Compressions(c, workdir, model, tokenizer, model_fp, calib_texts)
    context = {"job": c.job, "settings": job.settings(), "model": model_fp, "tokenizer": tok_fp,
               "data": job.data_digest}

    units = list(job.units())
    bar = tqdm(total=len(units), desc=c.job, disable=not c.progress)
    rows: list[dict] = []
    try:
        for method, rate, unit in units:
            comp_key = "original" if method == "original" else compressions.key(method, rate)
            key = digest(context, comp_key, unit)
            done = [r for r in results.rows if r.get("key") == key or r.get("unit") == key]
            if done:
                rows += [{**r, "cached": True} for r in done]   # a finished row, not redone
                bar.update(1)
                continue
            bar.set_postfix_str(f"{method} rate {rate:g}: compressing")
            emb, compress_seconds, reused = (None, 0.0, False) if method == "original" else \
                compressions.get(method, rate)
            quality = getattr(emb, "metrics", {}) if emb is not None else {}
            common = {"key": key, "job": c.job, "model": c.model, "method": method, "output": None,
                      "rate": rate, **embedding_fields(model, emb, unit.get("output")),
                      "svd_solver": (emb.meta.get("solver") if emb is not None else None),
                      "mean_cosine": quality.get("cos_mean"),
                      "rel_frobenius": quality.get("rel_frobenius"),
                      "method_options": json.loads(json.dumps(
                          compression_options(c, method), default=str)),
                      "compress_seconds": compress_seconds, "reused": reused,
                      "embedding_dir": None if emb is None else
                      str(compressions.cache.path(method, rate, comp_key))}
            bar.set_postfix_str(f"{method} rate {rate:g}: {job.doing}")
            new = job.run(model, emb, unit, common)
            for row in new:
                results.put(row)
            rows += new
            bar.update(1)
    finally:
        bar.close()
    job.finish(model, tokenizer, rows, compressions)
    return rows


def write_samples(c, workdir: Path, model, tokenizer, rows: list[dict], compressions) -> None:
    """Greedy continuations of `c.prompt` by the original model and by the best compressed one
    of this run, side by side in <workdir>/samples.md (and samples.json)."""
    compressed = [r for r in rows if r["method"] != "original" and math.isfinite(r["value"])]
    models = [(report.UNCOMPRESSED_LABEL, None, model)]
    if compressed:
        best = min(compressed, key=lambda r: r["value"])
        emb = compressions.get(best["method"], best["rate"])[0]
        label = f"{best['method']} rate {best['rate']:g}" + \
            (f" ({report.output_label(best)})" if best["output"] else "")
        models.append((label, best, swap_embedding(model, emb, output=best["output"] or "tied")))
    ids = tokenizer(c.prompt, add_special_tokens=True)["input_ids"]
    samples = []
    for label, row, m in models:
        new = generate(m, [ids], c.prompt_tokens, eos_id=tokenizer.eos_token_id)[0]
        samples.append({"model": label, "ppl": None if row is None else row["value"],
                        "continuation": tokenizer.decode(new, skip_special_tokens=True)})
    report.atomic_write(workdir / "samples.json", json.dumps(
        {"prompt": c.prompt, "samples": samples}, indent=1) + "\n")
    lines = [f"Prompt: {c.prompt!r}", "", "| model | greedy continuation |", "|---|---|"]
    cells = [" ".join(s["continuation"].split()).replace("|", "\\|") for s in samples]
    lines += [f"| {s['model']} | {cell} |" for s, cell in zip(samples, cells)]
    report.atomic_write(workdir / "samples.md", "\n".join(lines) + "\n")

