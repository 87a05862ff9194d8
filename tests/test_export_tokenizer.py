"""The tokenizer `dirjax.export_hf` writes loads under transformers 4.57 and 5.x alike and gives
the same ids in both, the ids of the source's own tokenizer (what dirjax evaluates with): each
tiny model exported here under 5.x, checked against tests/fixtures/tokenizer_compat_457.json (the
ids transformers 4.57.6 gives for the same exports: scripts/fixtures_tokenizer_compat.py), and,
in a slow test, against a transformers 4.x python run live where one is at hand."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import transformers

from dirjax.models.tokenizer_export import COMPAT_CLASS, V5_ONLY_CLASSES
from dirjax.models.weights import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fixtures_tokenizer_compat.py"
_spec = importlib.util.spec_from_file_location("fixtures_tokenizer_compat", SCRIPT)
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)
FIXTURE = json.loads(compat.FIXTURE.read_text())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{case: (export folder, the source's tokenizer)}, all under one root folder."""
    root = tmp_path_factory.mktemp("exports")
    return {name: compat.export_case(name, root / name) for name in compat.CASES}


def test_fixture_is_from_transformers_4_and_covers_the_cases():
    assert FIXTURE["transformers"].startswith("4."), FIXTURE["transformers"]
    assert FIXTURE["texts"] == compat.TEXTS
    assert set(FIXTURE["models"]) == set(compat.CASES)
    assert all(m["class"] == COMPAT_CLASS for m in FIXTURE["models"].values())


@pytest.mark.parametrize("name", list(compat.CASES))
def test_export_ids_equal_transformers_457_and_the_source(exports, name):
    folder, source_tok = exports[name]
    want = compat.encode(source_tok)                      # the source's tokenizer, 5.x
    old = FIXTURE["models"][name]                         # the export under 4.57.6
    for tok in (transformers.AutoTokenizer.from_pretrained(str(folder)),   # the export, 5.x
                load_tokenizer(folder)):                  # ... as dirjax loads it
        got = compat.encode(tok)
        assert got["ids"] == want["ids"] == old["ids"]
        assert got["batch"] == want["batch"] == old["batch"]
        assert tok.pad_token_id == source_tok.pad_token_id == old["pad_token_id"]
    if name == "gguf-bos-eos":   # the case that adds special tokens still does
        bos, eos = source_tok.bos_token_id, source_tok.eos_token_id
        assert all(ids[0] == bos and ids[-1] == eos and len(ids) >= 2 for ids in old["ids"])
    else:
        assert old["ids"][-1] == []


@pytest.mark.parametrize("name", list(compat.CASES))
def test_export_tokenizer_config_names_no_v5_only_class(exports, name):
    folder, _ = exports[name]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == COMPAT_CLASS
    assert config["tokenizer_class"] not in V5_ONLY_CLASSES
    # nothing that 5.x would rebuild the post-processor from, or 4.57 cannot read
    assert "add_bos_token" not in config and "add_eos_token" not in config
    assert not isinstance(config.get("extra_special_tokens"), list)
    assert (folder / "tokenizer.json").is_file()


def _tf4_python() -> tuple[str | None, str]:
    """(a python with transformers 4.x, or None; why not)."""
    named = os.environ.get("DIRJAX_TF4_PYTHON")
    python = named or "/tmp/tf457/bin/python"
    if not named and not Path(python).is_file():
        return None, ("no transformers 4.x python: set DIRJAX_TF4_PYTHON, or create /tmp/tf457 "
                      "(see scripts/fixtures_tokenizer_compat.py)")
    try:
        out = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{python}: {e}"
    version = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode or not version.startswith("4."):
        err = (out.stderr.strip().splitlines() or [""])[-1]
        return None, f"{python} has no transformers 4.x ({version or err})"
    return python, ""


# slow: a second interpreter importing transformers 4.x, and it needs that environment, which
# the default suite does not have (the fixture test above covers the same ids offline)
@pytest.mark.slow
def test_export_ids_under_a_live_transformers_4(exports, tmp_path):
    python, why = _tf4_python()
    if python is None:
        pytest.skip(why)
    root = next(iter(exports.values()))[0].parent
    out = tmp_path / "live.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run([python, str(SCRIPT), "read", str(root), str(out)], capture_output=True,
                         text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    live = json.loads(out.read_text())
    assert live["transformers"].startswith("4.")
    for name, (folder, source_tok) in exports.items():
        want = compat.encode(source_tok)
        assert live["models"][name]["class"] == COMPAT_CLASS
        assert live["models"][name]["ids"] == want["ids"], name
        assert live["models"][name]["batch"] == want["batch"], name
