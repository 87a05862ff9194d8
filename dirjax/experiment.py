"""The main job: compress a model's embedding table at every rate with every method, swap each
result into the model, evaluate, and report. `run.py` is a thin CLI around `run_experiment`;
a notebook calls it the same way:

    from dirjax.experiment import base_config, run_experiment
    config = base_config()          # or ml_collections.config_flags / a configs/*.py get_config()
    config.rates = (5.0, 10.0)
    rows = run_experiment(config, "runs/mine")

Order of work, so that a mistake costs nothing: check the config, read the data, load the
model and check every rate against its table BEFORE any compression or evaluation. Then the
original model is evaluated, and for each method and rate the table is compressed (or a
finished compression found in `workdir/embeddings/` is reused), swapped in once per `output`,
and evaluated. After every row, `results.json`, `results.md` and `plot.png` are rewritten
atomically, so a long sweep shows its progress and never leaves a half-written file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
import ml_collections
from tqdm.auto import tqdm

from dirjax import data as data_lib
from dirjax import report
from dirjax.errors import ConfigError, DataError

TASKS = {  # task -> (metric, datasets it reads)
    "causal_ppl": ("ppl", ("stdlib", *data_lib.TEXTS)),
    "mlm_ppl": ("mlm_ppl", ("stdlib", *data_lib.TEXTS)),
    "sts": ("spearman_x100", tuple(data_lib.STS)),
}
LOW_RANK_METHODS = ("svd", "ae")     # their rate must leave 1 <= rank < d: checked up front
OUTPUTS = ("tied", "original")


def base_config() -> ml_collections.ConfigDict:
    """Every field a config may set, with its default (the offline default experiment)."""
    c = ml_collections.ConfigDict()
    c.model = "smollm2-135m"        # alias, local HF dir, .gguf file or Hub id (dirjax.load_model)
    c.dtype = "float32"
    c.task = "causal_ppl"           # causal_ppl | mlm_ppl | sts
    c.dataset = "stdlib"            # stdlib | wikitext-2-raw | wikitext-2 | stsb
    c.split = "heldout"             # stdlib: heldout | train; wikitext: test | validation; stsb: validation
    c.data_dir = ""                 # local data folder; "" = $DIRJAX_DATA_DIR, else the Hub
    c.max_tokens = 8192             # causal_ppl: first tokens of the stream (0 = all)
    c.max_length = 512              # window (causal) / truncation (mlm, sts) length
    c.stride = 0                    # causal_ppl: window stride (0 = max_length, no overlap)
    c.batch_size = 4
    c.max_examples = 0              # mlm_ppl lines / sts pairs kept (0 = all)
    c.mlm_probability = 0.15
    c.mlm_min_tokens = 20
    c.seed = 0                      # masking seed (mlm_ppl)
    c.methods = ("svd", "ae")
    c.rates = (10.0,)
    c.outputs = ("tied", "original")   # for tied LM heads; ignored by models without one
    c.method_options = ml_collections.ConfigDict({"svd": {}, "ae": {"epochs": 30}})
    c.progress = True
    return c


# ---------------------------------------------------------------------------- checks

def _as_tuple(value, name: str) -> tuple:
    if isinstance(value, (str, int, float)):
        value = (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"config.{name} must be a list, got {value!r}") from None


def check_config(config) -> ml_collections.ConfigDict:
    """A validated copy of `config` with the defaults of missing fields; ConfigError otherwise."""
    base = base_config()
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(given) - set(base.keys()))
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)} "
                          f"(known: {', '.join(base.keys())})")
    c = base.to_dict()
    c.update(given)
    if c["task"] not in TASKS:
        raise ConfigError(f"config.task must be one of {', '.join(TASKS)}, got {c['task']!r}")
    if c["dataset"] not in TASKS[c["task"]][1]:
        raise ConfigError(f"task {c['task']} reads one of {', '.join(TASKS[c['task']][1])}, "
                          f"not dataset {c['dataset']!r}")
    for name in ("max_tokens", "max_length", "stride", "batch_size", "max_examples",
                 "mlm_min_tokens", "seed"):
        if isinstance(c[name], bool) or not isinstance(c[name], int) or c[name] < 0:
            raise ConfigError(f"config.{name} must be a non-negative integer, got {c[name]!r}")
    if c["batch_size"] < 1 or c["max_length"] < 2:
        raise ConfigError("config.batch_size must be >= 1 and config.max_length >= 2")
    if c["stride"] > c["max_length"]:
        raise ConfigError(f"config.stride {c['stride']} > max_length {c['max_length']}: "
                          "tokens between windows would never be scored")
    if not 0 < float(c["mlm_probability"]) < 1:
        raise ConfigError(f"config.mlm_probability must be in (0, 1), got {c['mlm_probability']}")
    c["methods"] = _as_tuple(c["methods"], "methods")
    if not all(isinstance(m, str) and m for m in c["methods"]):
        raise ConfigError(f"config.methods must be method names, got {c['methods']!r}")
    c["rates"] = _as_tuple(c["rates"], "rates")
    for r in c["rates"]:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 1:
            raise ConfigError(f"config.rates must be numbers > 1, got {r!r}")
    c["rates"] = tuple(float(r) for r in c["rates"])
    c["outputs"] = _as_tuple(c["outputs"], "outputs")
    if not c["outputs"] or any(o not in OUTPUTS for o in c["outputs"]):
        raise ConfigError(f"config.outputs must be a non-empty list of {OUTPUTS}, got {c['outputs']!r}")
    options = c["method_options"] or {}
    # options of a known method left out of `methods` (e.g. --config.methods=svd on a config
    # that sets options for several) are unused; an unknown name is a typo
    from dirjax.compress import METHODS
    stray = sorted(set(options) - set(c["methods"]) - set(METHODS))
    if stray:
        raise ConfigError(f"config.method_options names unknown method(s): "
                          f"{', '.join(stray)}")
    c["method_options"] = {m: dict(options.get(m) or {}) for m in c["methods"]}
    if c["methods"] and not c["rates"]:
        raise ConfigError("config.rates is empty")
    data_lib.normalise_split(c["dataset"], c["split"])
    return ml_collections.ConfigDict(c)


def load_data(c):
    """The evaluation data of the config (raises DataError / MissingPackageError if absent)."""
    if c.task == "sts":
        pairs = data_lib.load_sts(c.dataset, c.split, c.data_dir or None)
        if c.max_examples:
            pairs = data_lib.SentencePairs(*(x[:c.max_examples] for x in
                                             (pairs.sentence1, pairs.sentence2, pairs.score)))
        return pairs
    text = data_lib.load_text(c.dataset, c.split, c.data_dir or None)
    if not text.strip():
        raise DataError(f"{c.dataset} [{c.split}] is empty")
    return text


def check_model(c, model) -> None:
    """The model can do the task, and every low-rank rate leaves 1 <= rank < d."""
    from dirjax.compress import METHODS, rank_for_rate

    unknown = [m for m in c.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)} in config.methods "
                          f"(known: {', '.join(sorted(METHODS))})")
    if c.task in ("causal_ppl", "mlm_ppl") and model.out_embedding is None:
        raise ConfigError(f"model {c.model} has no LM head: task {c.task} needs one "
                          "(use task 'sts' for an encoder)")
    if c.task == "causal_ppl" and type(model).__name__ == "Bert":
        raise ConfigError(f"model {c.model} is a masked LM: use task 'mlm_ppl'")
    if c.task == "mlm_ppl" and type(model).__name__ != "Bert":
        raise ConfigError(f"model {c.model} is not a masked LM: use task 'causal_ppl'")
    v, d = model.config.vocab_size, model.config.hidden_size
    for method in c.methods:
        if method in LOW_RANK_METHODS:
            for rate in c.rates:
                rank_for_rate(v, d, rate)


# ---------------------------------------------------------------------------- evaluation

def make_evaluator(c, tokenizer, data):
    """model -> {"value", "tokens", ...}: the task's metric on the prepared data."""
    from dirjax.evaluate import (causal_perplexity, mask_lines, mlm_perplexity,
                                 sts_spearman, tokenize_stream)

    if c.task == "causal_ppl":
        ids = tokenize_stream(tokenizer, data, c.max_tokens)

        def evaluate(model):
            out = causal_perplexity(model, ids, max_length=c.max_length, stride=c.stride or None,
                                    batch_size=c.batch_size, progress=c.progress)
            return {"value": out["ppl"], "tokens": out["tokens"], "nll": out["nll"]}
    elif c.task == "mlm_ppl":
        lines = data_lib.text_lines(data)
        examples = mask_lines(tokenizer, lines, probability=c.mlm_probability,
                              min_tokens=c.mlm_min_tokens, max_length=c.max_length, seed=c.seed)
        if c.max_examples:
            examples = examples[:c.max_examples]

        def evaluate(model):
            out = mlm_perplexity(model, examples, batch_size=c.batch_size, progress=c.progress)
            return {"value": out["ppl"], "tokens": out["tokens"], "nll": out["nll"],
                    "examples": len(examples)}
    else:
        def evaluate(model):
            out = sts_spearman(model, tokenizer, data, batch_size=c.batch_size,
                               max_length=c.max_length, progress=c.progress)
            return {"value": 100 * out["spearman"], "tokens": out["tokens"],
                    "examples": out["pairs"]}
    return evaluate


# ---------------------------------------------------------------------------- compression

def method_options(c, method: str) -> dict:
    """The options of `method` as a plain dict (JSON-able, keyword arguments of compress)."""
    options = c.method_options.get(method) or {}
    return options.to_dict() if hasattr(options, "to_dict") else dict(options)


def compression_dir(workdir: Path, c, method: str, rate: float, v: int, d: int) -> Path:
    """Where the compression of (model, method, rate, options) lives: readable name + hash."""
    key = json.dumps({"model": c.model, "dtype": c.dtype, "shape": [v, d], "method": method,
                      "rate": rate, "options": method_options(c, method)},
                     sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return workdir / "embeddings" / f"{method}-rate{rate:g}-{digest}"


def calibration_spec(c, method: str) -> dict | None:
    """The checked `calibration` option of `method` ({dataset, split, n_hidden}) or None.
    Its text must differ from the evaluation text."""
    spec = (c.method_options.get(method) or {}).get("calibration")
    if not spec:
        return None
    spec = dict(spec)
    unknown = sorted(set(spec) - {"dataset", "split", "n_hidden"})
    if unknown or "dataset" not in spec or "split" not in spec:
        raise ConfigError(f"method_options.{method}.calibration needs dataset and split "
                          f"(and optional n_hidden); got {sorted(spec)}")
    same_text = spec["dataset"].replace("-raw", "") == c.dataset.replace("-raw", "")
    if same_text and data_lib.normalise_split(spec["dataset"], spec["split"]) == \
            data_lib.normalise_split(c.dataset, c.split):
        raise ConfigError(f"method {method}: calibration text {spec['dataset']} [{spec['split']}] "
                          "is the evaluation text; pick a disjoint one")
    return spec


def calibration_options(c, method: str, text: str, model, tokenizer) -> dict:
    """`counts` `[V]` (and `hidden` `[N, d]`, see `dirjax.compress.calib.collect`) of the
    calibration `text` of `method`."""
    from dirjax.compress.calib import collect
    spec = calibration_spec(c, method)
    return collect(model, tokenizer, text, n_hidden=int(spec.get("n_hidden", 0)),
                   max_length=c.max_length)


def compressed_table(c, table, method: str, rate: float, directory: Path, calib=None):
    """(embedding, seconds spent, reused?) for `table [V, d]`: loaded if finished, else made.

    Every result is saved to `directory`; an AE's Orbax training checkpoints live beside it
    until it is saved, so a killed run resumes its training. `calib()` gives the calibration
    arrays of methods that need them (collected only when a compression is really made).
    """
    from dirjax.compress import compress, load_compressed, save_compressed

    if (directory / "meta.json").exists():
        return load_compressed(directory), 0.0, True
    options = {k: v for k, v in method_options(c, method).items() if k != "calibration"}
    train_dir = directory.with_name(directory.name + ".train")
    if method == "ae":
        options.setdefault("workdir", str(train_dir))
        options.setdefault("progress", c.progress)
    start = time.perf_counter()
    if calib is not None:
        options.update(calib())
    emb = compress(table, rate=rate, method=method, **options)
    seconds = time.perf_counter() - start
    save_compressed(emb, directory, {"model": c.model, "requested_rate": rate,
                                     "options": method_options(c, method)})
    shutil.rmtree(train_dir, ignore_errors=True)
    return emb, seconds, False


# ---------------------------------------------------------------------------- the job

def run_experiment(config, workdir) -> list[dict]:
    """Run the sweep of `config` (see `base_config`) in `workdir`; return the result rows."""
    c = check_config(config)
    from dirjax.compress import reconstruction_metrics
    from dirjax.embedding import compression_rate, swap_embedding
    from dirjax.models import load_model

    workdir = Path(workdir)
    calib_texts = {}   # read now, so a missing calibration file costs nothing
    for method in c.methods:
        if spec := calibration_spec(c, method):
            calib_texts[method] = data_lib.load_text(spec["dataset"], spec["split"],
                                                     c.data_dir or None)
    data = load_data(c)
    model, tokenizer = load_model(c.model, dtype=getattr(jnp, c.dtype))
    check_model(c, model)
    evaluate = make_evaluator(c, tokenizer, data)

    v, d = model.config.vocab_size, model.config.hidden_size
    outputs = c.outputs if model.tied and model.out_embedding is not None else (None,)
    metric = TASKS[c.task][0]
    dataset = f"{c.dataset}/{data_lib.SPLIT_ALIASES.get(c.split, c.split)}"
    common = {"model": c.model, "dataset": dataset, "metric": metric}
    rows: list[dict] = []
    jobs = [("original", None)] + [(m, r) for m in c.methods for r in c.rates]
    bar = tqdm(total=1 + len(c.methods) * len(c.rates) * len(outputs), desc="sweep",
               disable=not c.progress)

    def add(row):
        rows.append(row)
        report.write_results(rows, workdir)
        bar.update(1)

    table = model.embedding.table()
    calibrations = {}
    for method, rate in jobs:
        if method == "original":
            bar.set_postfix_str("original")
            start = time.perf_counter()
            out = evaluate(model)
            add({**common, "method": "original", "rate": 1.0, "rank": None, "output": None,
                 **out, "embedding_params": v * d, "seconds": time.perf_counter() - start})
            continue
        bar.set_postfix_str(f"{method} rate {rate:g}: compressing")
        directory = compression_dir(workdir, c, method, rate, v, d)
        if method in calib_texts and method not in calibrations:   # once, original model
            calibrations[method] = functools.cache(functools.partial(
                calibration_options, c, method, calib_texts[method], model, tokenizer))
        emb, compress_seconds, reused = compressed_table(c, table, method, rate, directory,
                                                         calibrations.get(method))
        quality = getattr(emb, "metrics", None) or reconstruction_metrics(table, emb)
        for output in outputs:
            bar.set_postfix_str(f"{method} rate {rate:g} {output or ''}: evaluating")
            start = time.perf_counter()
            out = evaluate(swap_embedding(model, emb, output=output or "tied"))
            add({**common, "method": method, "rate": rate, "rank": getattr(emb, "rank", None),
                 "output": output, **out, "embedding_params": int(emb.num_params()),
                 "achieved_rate": compression_rate(emb, v, d),
                 "mean_cosine": quality.get("cos_mean"),
                 "rel_frobenius": quality.get("rel_frobenius"),
                 "seconds": time.perf_counter() - start,
                 "compress_seconds": compress_seconds, "reused": reused,
                 "embedding_dir": str(directory)})
    bar.close()
    return rows
