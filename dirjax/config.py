"""The one config schema of dirjax's two jobs, and its check.

    job "eval"      compress the table with every method at every rate, swap each result into
                    the model, and score it (causal / masked-LM perplexity, zero-shot STS);
    job "finetune"  the same compressions, each fine-tuned on GLUE tasks or SQuAD v1.1 over
                    several seeds, scored on dev.

Both jobs share the fields of `COMMON`; each adds its own. `base_config(job)` holds every field
a config of that job may set, with its default; `check_config(config)` refuses an unknown
field (naming it), a bad value, an unknown method or method option, before anything is loaded.
A config file (configs/*.py) is Python that runs: its `get_config()` returns a ConfigDict.

Method options (`method_options.<method>`) are the method's keyword arguments
(`dirjax.compress.compress`), plus `calibration` for methods that need calibration arrays:
{"dataset", "split", "n_hidden"}, a text disjoint from the evaluation text (default:
WikiText-2 validation when the evaluation text is WikiText-2, else the stdlib "train" topics),
and `e2e` for the quantisers (vq, quant*): after compressing, train the continuous parameters
through the whole frozen model on that calibration text ({"steps", "lr", "tokens", "seq",
"batch", "held_tokens", "seed"}, dirjax/compress/e2e.py).
"""
from __future__ import annotations

import math

import ml_collections

from dirjax import data as data_lib
from dirjax.compress import METHODS, check_options, get_method
from dirjax.compress.rate import check_rate
from dirjax.data import glue
from dirjax.errors import ConfigError
from dirjax.finetune import TREATMENTS
from dirjax.models import DTYPES  # the dtypes a model loads in (dirjax.models.dtype_name)
from dirjax.models.heads import POOLINGS

JOBS = ("eval", "finetune")
COMPUTE_DTYPES = ("float32", "bfloat16")   # matmul operands (accumulation is always fp32)

COMMON = {
    "job": "eval",                  # eval | finetune
    "model": "smollm2-135m",        # alias, local HF dir, .gguf file or Hub id (dirjax.load_model)
    "tokenizer": "",                # "" = the model's own; else a tokenizer dir or Hub id
    "dtype": "float32",             # parameters of the loaded model
    # the operands of every matmul: "bfloat16" scores with a bf16 copy of the parameters made
    # once per evaluation (fine-tuning: per step) from the loaded ones; every product
    # accumulates in fp32; norms, softmax, log-sum-exp and the loss stay fp32 (docs/speed.md)
    "compute_dtype": "float32",     # float32 | bfloat16
    "data_dir": "",                 # local data folder; "" = $DIRJAX_DATA_DIR, else the Hub
    "methods": ("svd", "ae"),       # "original" may be listed to set its place; else it runs first
    "rates": (10.0,),
    "method_options": {"ae": {"epochs": 30}},
    "progress": True,
}

EVAL = {
    "task": "causal_ppl",           # causal_ppl | mlm_ppl | sts
    "dataset": "stdlib",            # stdlib | wikitext-2-raw | wikitext-2 | stsb
    "split": "heldout",             # stdlib: heldout | train; wikitext: test | validation;
                                    # stsb: validation
    "max_tokens": 8192,             # causal_ppl: first tokens of the stream (0 = all)
    "max_length": 512,              # window (causal) / truncation (mlm, sts) length
    "stride": 0,                    # causal_ppl: window stride (0 = max_length, no overlap)
    "bos": "auto",                  # causal_ppl: a BOS before every window: auto (when the
                                    # tokenizer adds one: Gemma yes, SmolLM2/GPT-2 no) | yes | no
    "batch_size": 4,
    "max_examples": 0,              # mlm_ppl lines / sts pairs kept (0 = all)
    "mlm_probability": 0.15,
    "mlm_min_tokens": 20,
    "seed": 0,                      # masking seed (mlm_ppl)
    "outputs": ("tied", "original"),  # for tied LM heads; ignored by models without one
    "prompt": "",                   # causal_ppl: after the sweep, greedy continuations of this
    "prompt_tokens": 32,            # prompt by the original and the best compressed model
}

FINETUNE = {
    "tasks": ("rte",),              # GLUE task names and/or "squad"
    "seeds": (1,),
    # fine-tune the uncompressed model too, as the reference rows (False: only `methods`; an
    # original fine-tune costs as much as a compressed one, and its rows may exist already)
    "reference": True,
    "embedding": "frozen_codes",    # frozen_codes | frozen | full (dirjax.finetune)
    "max_length": 128,
    "pooling": "auto",              # auto | pooler | cls | mean (dirjax.models.heads)
    "lr": 2e-5,
    "batch_size": 32,               # effective (per optimizer update)
    "micro_batch_size": 32,         # per jit step; lower it to accumulate gradients
    "epochs": 3,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "adam_eps": 1e-8,
    "dropout": 0.1,
    "eval_batch_size": 64,
    "pad_multiple": 32,
    "max_train_examples": 0,        # > 0: a quick run on the first examples
    "max_eval_examples": 0,
    "stride": 128,                  # squad: window overlap
    "n_best": 20,                   # squad: span candidates
    "max_answer_length": 30,        # squad
    "train_file": "train-v1.1.json",  # squad: under <data_dir>/squad/
}

EVAL_TASKS = {  # task -> (metric, datasets it reads)
    "causal_ppl": ("ppl", ("stdlib", "wikitext-2-raw", "wikitext-2")),
    "mlm_ppl": ("mlm_ppl", ("stdlib", "wikitext-2-raw", "wikitext-2")),
    "sts": ("spearman_x100", ("stsb",)),
}
OUTPUTS = ("tied", "original")


def base_config(job: str = "eval") -> ml_collections.ConfigDict:
    """Every field a config of `job` may set, with its default (eval: the offline demo)."""
    if job not in JOBS:
        raise ConfigError(f"config.job must be one of {', '.join(JOBS)}, got {job!r}")
    fields = {**COMMON, **(EVAL if job == "eval" else FINETUNE), "job": job}
    return ml_collections.ConfigDict(fields)


# ---------------------------------------------------------------------------- checks

def _as_tuple(value, name: str) -> tuple:
    if isinstance(value, (str, int, float)):
        value = (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"config.{name} must be a list, got {value!r}") from None


def _plain(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


def _check_ints(c: dict, names) -> None:
    for name in names:
        v = c[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"config.{name} must be a non-negative integer, got {v!r}")


def _check_numbers(c: dict, names) -> None:
    for name in names:
        v = c[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"config.{name} must be a non-negative number, got {v!r}")


def check_config(config) -> ml_collections.ConfigDict:
    """A validated copy of `config` with the defaults of missing fields; ConfigError otherwise.

    Judged without loading anything: fields, values, methods and their options (each method's
    own check), calibration specs, rank-free rate bounds."""
    given = _plain(config) if config is not None else {}
    given = dict(given)
    job = given.get("job", "eval")
    base = base_config(job)
    unknown = sorted(set(given) - set(base.keys()))
    if unknown:
        raise ConfigError(f"unknown config field(s) for job {job}: {', '.join(unknown)} "
                          f"(known: {', '.join(base.keys())})")
    c = base.to_dict()
    c.update(given)
    for name in ("model", "tokenizer", "data_dir"):
        if c[name] is None:
            c[name] = ""
        if not isinstance(c[name], str):
            raise ConfigError(f"config.{name} must be a string, got {c[name]!r}")
    if not c["model"]:
        raise ConfigError("config.model is empty")
    if c["dtype"] not in DTYPES:
        raise ConfigError(f"config.dtype must be one of {', '.join(DTYPES)}, got {c['dtype']!r}")
    if c["compute_dtype"] not in COMPUTE_DTYPES:
        raise ConfigError(f"config.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                          f"got {c['compute_dtype']!r}")
    if not isinstance(c["progress"], bool):
        raise ConfigError(f"config.progress must be True or False, got {c['progress']!r}")
    _check_methods_and_rates(c)
    (_check_eval if job == "eval" else _check_finetune)(c)
    return ml_collections.ConfigDict(c)


def _check_methods_and_rates(c: dict) -> None:
    c["methods"] = _as_tuple(c["methods"], "methods")
    if not all(isinstance(m, str) and m for m in c["methods"]):
        raise ConfigError(f"config.methods must be method names, got {c['methods']!r}")
    if len(set(c["methods"])) != len(c["methods"]):
        raise ConfigError(f"config.methods lists a method twice: {c['methods']!r}")
    compressed = [m for m in c["methods"] if m != "original"]
    for m in compressed:
        if get_method(m).module is None:               # unknown name: ConfigError
            raise ConfigError(f"method {m!r} registers no embedding class, so its results could "
                              f"not be cached: register_method({m!r}, fn, module=...)")
    c["rates"] = _as_tuple(c["rates"], "rates")
    try:
        c["rates"] = tuple(check_rate(r) for r in c["rates"])
    except ConfigError as e:
        raise ConfigError(f"config.rates: {e}") from None
    if compressed and not c["rates"]:
        raise ConfigError("config.rates is empty")
    options = _plain(c["method_options"]) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"config.method_options must map method names to options, "
                          f"got {options!r}")
    # options of a known method left out of `methods` (e.g. --config.methods=svd on a config
    # that sets options for several) are unused; an unknown name is a typo
    stray = sorted(set(options) - set(c["methods"]) - set(METHODS))
    if stray:
        raise ConfigError(f"config.method_options names unknown method(s): {', '.join(stray)}")
    checked = {}
    for m in compressed:
        opts = dict(_plain(options.get(m)) or {})
        calibration = opts.pop("calibration", None)
        e2e = opts.pop("e2e", None)
        check_options(m, opts)
        if calibration is not None or get_method(m).needs:
            opts["calibration"] = _check_calibration(c, m, calibration)
        if e2e is not None:
            opts["e2e"] = _check_e2e(m, e2e, opts)
        checked[m] = opts
    c["method_options"] = checked


def _check_e2e(method: str, spec, opts: dict) -> dict:
    """`method_options.<method>.e2e` (dirjax/compress/e2e.py): its fields, a method with
    continuous parameters, and a calibration text to train on."""
    from dirjax.compress.e2e import check_e2e
    fields = check_e2e(method, spec, get_method(method).module_class())
    if "calibration" not in opts:
        raise ConfigError(f"method_options.{method}.e2e trains on calibration text: set "
                          f"method_options.{method}.calibration (a text disjoint from the "
                          "evaluation text, e.g. {dataset: wikitext-2, split: validation})")
    return fields


def _check_calibration(c: dict, method: str, spec) -> dict:
    """The calibration text of `method` ({dataset, split, n_hidden}), disjoint from the text
    the job evaluates on."""
    needs = get_method(method).needs
    if not spec:
        wikitext = c.get("dataset", "").startswith("wikitext")
        spec = {"dataset": "wikitext-2", "split": "validation"} if wikitext else \
            {"dataset": "stdlib", "split": "train"}
    spec = dict(_plain(spec))
    unknown = sorted(set(spec) - {"dataset", "split", "n_hidden"})
    if unknown or "dataset" not in spec or "split" not in spec:
        raise ConfigError(f"method_options.{method}.calibration needs dataset and split "
                          f"(and optional n_hidden); got {sorted(spec)}")
    if spec["dataset"] not in ("stdlib", *data_lib.TEXTS):
        raise ConfigError(f"method_options.{method}.calibration.dataset must be a text "
                          f"(stdlib, {', '.join(data_lib.TEXTS)}), got {spec['dataset']!r}")
    spec["split"] = data_lib.normalise_split(spec["dataset"], spec["split"])
    spec.setdefault("n_hidden", 8192 if "hidden" in needs else 0)
    _check_ints(spec, ("n_hidden",))
    if c["job"] == "eval" and c["dataset"] in ("stdlib", *data_lib.TEXTS):
        same_text = spec["dataset"].replace("-raw", "") == c["dataset"].replace("-raw", "")
        if same_text and spec["split"] == data_lib.normalise_split(c["dataset"], c["split"]):
            raise ConfigError(f"method {method}: calibration text {spec['dataset']} "
                              f"[{spec['split']}] is the evaluation text; pick a disjoint one")
    return spec


def _check_eval(c: dict) -> None:
    if c["task"] not in EVAL_TASKS:
        raise ConfigError(f"config.task must be one of {', '.join(EVAL_TASKS)}, got {c['task']!r}")
    if c["dataset"] not in EVAL_TASKS[c["task"]][1]:
        raise ConfigError(f"task {c['task']} reads one of {', '.join(EVAL_TASKS[c['task']][1])}, "
                          f"not dataset {c['dataset']!r}")
    _check_ints(c, ("max_tokens", "max_length", "stride", "batch_size", "max_examples",
                    "mlm_min_tokens", "seed", "prompt_tokens"))
    if not isinstance(c["prompt"], str):
        raise ConfigError(f"config.prompt must be a string, got {c['prompt']!r}")
    if c["prompt"] and c["task"] != "causal_ppl":
        raise ConfigError("config.prompt (continuations) needs task causal_ppl")
    if c["batch_size"] < 1 or c["max_length"] < 2:
        raise ConfigError("config.batch_size must be >= 1 and config.max_length >= 2")
    if c["stride"] > c["max_length"]:
        raise ConfigError(f"config.stride {c['stride']} > max_length {c['max_length']}: "
                          "tokens between windows would never be scored")
    if c["bos"] not in ("auto", "yes", "no"):
        raise ConfigError(f"config.bos must be auto, yes or no, got {c['bos']!r}")
    if not 0 < float(c["mlm_probability"]) < 1:
        raise ConfigError(f"config.mlm_probability must be in (0, 1), got {c['mlm_probability']}")
    c["outputs"] = _as_tuple(c["outputs"], "outputs")
    if not c["outputs"] or any(o not in OUTPUTS for o in c["outputs"]):
        raise ConfigError(f"config.outputs must be a non-empty list of {OUTPUTS}, "
                          f"got {c['outputs']!r}")
    data_lib.normalise_split(c["dataset"], c["split"])


def _check_finetune(c: dict) -> None:
    c["tasks"] = _as_tuple(c["tasks"], "tasks")
    if not c["tasks"]:
        raise ConfigError("config.tasks is empty")
    c["tasks"] = tuple(t if t == "squad" else glue.get_task(t).name for t in c["tasks"])
    c["seeds"] = _as_tuple(c["seeds"], "seeds")
    if not c["seeds"] or any(isinstance(s, bool) or not isinstance(s, int) for s in c["seeds"]):
        raise ConfigError(f"config.seeds must be a non-empty list of integers, got {c['seeds']!r}")
    if c["embedding"] not in TREATMENTS:
        raise ConfigError(f"config.embedding must be one of {', '.join(TREATMENTS)}, "
                          f"got {c['embedding']!r}")
    if c["pooling"] not in ("auto", *POOLINGS):
        raise ConfigError(f"config.pooling must be one of auto, {', '.join(POOLINGS)}, "
                          f"got {c['pooling']!r}")
    _check_ints(c, ("max_length", "batch_size", "micro_batch_size", "epochs", "eval_batch_size",
                    "pad_multiple", "max_train_examples", "max_eval_examples", "stride", "n_best",
                    "max_answer_length"))
    _check_numbers(c, ("lr", "warmup_ratio", "weight_decay", "max_grad_norm", "adam_eps",
                       "dropout"))
    for name in ("max_length", "batch_size", "micro_batch_size", "epochs", "eval_batch_size",
                 "pad_multiple"):
        if c[name] < 1:
            raise ConfigError(f"config.{name} must be >= 1")
    if c["batch_size"] % c["micro_batch_size"]:
        raise ConfigError(f"config.batch_size {c['batch_size']} is not a multiple of "
                          f"micro_batch_size {c['micro_batch_size']}")
    if not 0 <= c["dropout"] < 1:
        raise ConfigError(f"config.dropout must be in [0, 1), got {c['dropout']}")
