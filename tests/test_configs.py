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
