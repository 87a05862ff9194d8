"""Every committed config loads and passes its job's config check (a new config is covered by
being in the folder); a misspelt field fails in both jobs, with the field named."""
import importlib.util
from pathlib import Path

import pytest

from dirjax.config import base_config, check_config
from dirjax.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"configs.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# configs whose get_config takes an argument (`--config configs/X.py:ARG`): each value it names
ARGS = {"quality_sweep": load(CONFIGS[0].parent / "quality_sweep.py").MODELS}


@pytest.mark.parametrize("path,arg", [(p, a) for p in CONFIGS for a in ARGS.get(p.stem, (None,))],
                         ids=lambda x: getattr(x, "stem", x))
def test_every_config_passes_its_check(path, arg):
    module = load(path)
    assert module.__doc__ and "python run.py" in module.__doc__   # the command that runs it
    config = module.get_config() if arg is None else module.get_config(arg)
    checked = check_config(config)
    assert checked.job in ("eval", "finetune")
    assert set(checked.keys()) == set(base_config(checked.job).keys())


@pytest.mark.parametrize("job", ["eval", "finetune"])
def test_a_misspelt_field_is_named_in_both_jobs(job):
    c = base_config(job)
    c.learning_rate = 1e-3                    # the field is lr
    with pytest.raises(ConfigError, match=f"unknown config field.*job {job}.*learning_rate"):
        check_config(c)


@pytest.mark.parametrize("job", ["eval", "finetune"])
def test_method_options_are_judged_by_the_method_before_any_work(job):
    c = base_config(job)
    c.methods = ("svd", "ae")
    c.method_options = {"svd": {"n_iters": 3}}
    with pytest.raises(ConfigError, match="unknown option.*'svd'.*n_iters"):
        check_config(c)
    c.method_options = {"ae": {"epoch": 3}}
    with pytest.raises(ConfigError, match="unknown option.*'ae'.*epoch"):
        check_config(c)
    c.method_options = {"ae": {"epochs": "3"}}
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        check_config(c)
    c.methods = ("svd", "magic")
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        check_config(c)


def test_bad_values_of_the_finetune_job():
    for field, value, match in [("embedding", "thawed", "config.embedding"),
                                ("tasks", ("rte", "wnli2"), "unknown GLUE task"),
                                ("micro_batch_size", 5, "not a multiple"),
                                ("pooling", "max", "config.pooling"),
                                ("seeds", (), "seeds")]:
        c = base_config("finetune")
        c[field] = value
        with pytest.raises(ConfigError, match=match):
            check_config(c)


@pytest.mark.parametrize("dtype", ["foo", "int8"])
def test_a_bad_dtype_is_a_config_error(dtype):
    c = base_config()
    c.dtype = dtype
    with pytest.raises(ConfigError, match="config.dtype"):
        check_config(c)


@pytest.mark.parametrize("job", ["eval", "finetune"])
@pytest.mark.parametrize("value", ["float16", "fp32", "bf16", None])
def test_a_bad_compute_dtype_is_one_line_before_any_model_loads(job, value, tmp_path,
                                                                 monkeypatch):
    import dirjax.models
    from dirjax.experiment import run_experiment
    monkeypatch.setattr(dirjax.models, "load_model",
                        lambda *a, **k: pytest.fail("a model was loaded before the error"))
    c = base_config(job)
    c.compute_dtype = value
    with pytest.raises(ConfigError) as err:
        run_experiment(c, tmp_path / "work")
    message = str(err.value)
    assert "\n" not in message and message.startswith("config.compute_dtype must be one of "
                                                       "float32, bfloat16, got "), message
    assert not (tmp_path / "work").exists()


def test_compute_dtype_is_in_the_row_keys_only_when_it_changes_a_row(tmp_path):
    """Eval rows made before the field existed computed in fp32: at its default the key is
    today's (tests/test_registry.py pins it); bfloat16 is another key. Fine-tuning always
    had the field, in its keys."""
    from dirjax.compress.cache import digest
    from dirjax.experiment import JOBS

    def settings(job, **fields):
        c = base_config(job)
        c.update(fields)
        got = JOBS[job](check_config(c), tmp_path)
        got.bos = False
        return got.settings()

    default, bf16 = settings("eval"), settings("eval", compute_dtype="bfloat16")
    assert "compute_dtype" not in default and bf16["compute_dtype"] == "bfloat16"
    assert digest(default) != digest(bf16)
    assert settings("finetune")["compute_dtype"] == "float32"
    assert digest(settings("finetune")) != digest(settings("finetune", compute_dtype="bfloat16"))


# One bad value per option of every method (issue 24): each is refused by the method's check,
# before any model loads, in one line naming the option.
NAN, INF = float("nan"), float("inf")
QUANT_BAD = {"seed": [-1, True, 1.5, "0"], "group": [0, 8.0, True, "8"],
             "rotate": [1, "yes", None], "center": [0], "clip": [None],
             "allocation": ["bogus", 3, None], "floor": [-0.1, NAN, True, "1"]}
BAD = {
    "quant": {**QUANT_BAD, "allocation": ["bogus", "frequency"]},   # no counts: quant_freq's
    "quant_freq": QUANT_BAD,
    "quant_gptq": {**QUANT_BAD, "head_weight": [1.5, -0.1, True, NAN]},
    "vq": {"seed": [-1, 2.0], "norm": ["bogus", None], "gain": ["bogus", 1],
           "tiers": [((-8, 2),), 5, ((8, -2),), ((8, 0),), ((8, 17),), (), ((8,),),
                     ((8.0, 2),), ((True, 2),), ((8, 2),) * 17, "((8, 2),)", ((8, 2, 1),)],
           "center": [1], "rotate": ["no"], "weighted": [0], "floor": [-1, INF],
           "head_weight": [2, -0.5], "iters": [-1, 0, 5.0, True], "refit_iters": [-1, 2.0],
           "ldlq_rounds": [0, 1.5], "refine_steps": [-5, 2.5], "refine_lr": [0, -1e-3, INF],
           "max_train": [0, 1e5], "prob_weight": [1.5, -0.1]},
    "svd": {"exact": [1, "yes"], "n_iter": [-1, "4", True], "oversample": [-1, 2.5],
            "seed": [1.5, -2]},
    "ae": {"epochs": [0, "3", True, 2.0], "batch_size": [0], "lr": [0, -1e-3, NAN],
           "lr_decay": [0, "0.5"], "lr_decay_every": [0, "4"], "w_cos": [-1], "w_rec": [-1],
           "alpha_start": [0], "alpha_end": [-0.1], "anneal_fraction": [1.5, -0.1],
           "seed": [1.5], "hidden": [5, (0,), ("a",), (True,)], "activation": ["bogus", ["relu"]],
           "init": ["pca"], "checkpoint_every": [0], "progress": ["yes", 1],
           "stop_after_epochs": [-1, "2"], "unroll": [0], "workdir": [5]},
}


@pytest.mark.parametrize("method,option,value",
                         [(m, o, v) for m, opts in BAD.items() for o, vs in opts.items()
                          for v in vs], ids=repr)
def test_a_bad_option_value_is_one_line_naming_it(method, option, value):
    from dirjax.compress import check_options
    with pytest.raises(ConfigError) as got:
        check_options(method, {option: value})
    message = str(got.value)
    assert option in message and "unknown" not in message and "\n" not in message


def test_every_quantiser_option_has_a_bad_value_and_good_values_pass():
    import numpy as np

    from dirjax.compress import check_options
    from dirjax.compress import quantize as Q
    from dirjax.compress import vq as VQ
    assert set(BAD["quant_gptq"]) == set(Q.RULES) | {"head_weight"}
    assert set(BAD["vq"]) == set(VQ.RULES)
    good = {"quant": dict(seed=np.int64(3), group=None, allocation="uniform", floor=1),
            "quant_freq": dict(group=16, rotate=False, center=True, clip=False, floor=0.0),
            "quant_gptq": dict(head_weight=1, allocation="frequency"),
            "vq": dict(tiers=[[8, 8], [4, 12]], norm="none", gain="hls", iters=np.int32(3),
                       refit_iters=0, ldlq_rounds=1, refine_steps=0, refine_lr=1, floor=0,
                       head_weight=0.0, max_train=1, prob_weight=1.0, weighted=True),
            "svd": dict(exact=None, n_iter=0, oversample=0, seed=0),
            "ae": dict(epochs=1, lr=1, hidden=[8, 4], workdir=None, stop_after_epochs=0)}
    for method, options in good.items():
        check_options(method, options)
