"""Loading helpers shared by the model files: config.json and safetensors reading (never
unpickle), shape-checked `take`, the check that an abstract (eval_shape) NNX model was filled,
and the tokenizer."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from dirjax.errors import UnknownSourceError, WeightsError


def read_config(directory: str | os.PathLike) -> dict:
    """The `config.json` of a Hugging Face checkpoint directory, as a dict."""
    file = Path(directory) / "config.json"
    if not file.exists():
        raise UnknownSourceError(f"{directory} has no config.json: not a Hugging Face checkpoint "
                                 "(nor a model saved by dirjax.save_model)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{file} is not valid JSON: {e}") from None


def read_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or its shards) in `directory`, as fp32 numpy arrays."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(
            p.name for p in directory.glob("*.pt*"))
        if pickles:
            raise WeightsError(
                f"{directory} holds only pickle checkpoints ({', '.join(pickles)}); dirjax reads "
                "safetensors only (convert with transformers: model.save_pretrained(dir, "
                "safe_serialization=True))")
        raise WeightsError(f"no .safetensors file in {directory}")
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            tensors = load_file(str(f))
        except TypeError:  # bf16 tensors: numpy has no bfloat16, go through jax (ml_dtypes)
            tensors = _load_via_jax(f)
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read {f}: {e}".splitlines()[0]) from None
        out.update({k: np.asarray(v, dtype=np.float32) if _is_float(v) else np.asarray(v)
                    for k, v in tensors.items()})
    return out


def _is_float(x) -> bool:
    return x.dtype.kind == "f" or x.dtype.name == "bfloat16"


def _load_via_jax(f: Path) -> dict:
    """A safetensors file with bf16 tensors, as jax arrays (jax knows bfloat16; numpy does not)."""
    from safetensors import SafetensorError
    from safetensors.flax import load_file

    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise WeightsError(f"cannot read {f}: {e}".splitlines()[0]) from None


def take(state: dict[str, np.ndarray], name: str, shape: tuple[int, ...], transpose: bool = False,
         prefixes: tuple[str, ...] = ("",)) -> np.ndarray:
    """state[prefix + name], transposed if asked, asserted to have `shape` (after transposing)."""
    for p in prefixes:
        if p + name in state:
            x = state[p + name]
            break
    else:
        raise WeightsError(f"checkpoint has no tensor {name!r} (tried prefixes {list(prefixes)})")
    if transpose:
        x = x.T
    if tuple(x.shape) != tuple(shape):
        raise WeightsError(f"tensor {name!r} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return np.ascontiguousarray(x)


def check_loaded(model: nnx.Module) -> None:
    """Assert that the mapping filled every parameter of the abstract (eval_shape) model."""
    empty = [".".join(map(str, path)) for path, node in nnx.iter_graph(model)
             if isinstance(node, nnx.Param) and isinstance(node.get_value(), jax.ShapeDtypeStruct)]
    assert not empty, f"parameters left unloaded: {empty}"


# one of these makes a directory a tokenizer; without any, transformers would build a
# placeholder with a one-token or default vocabulary and every score would be garbage
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def load_tokenizer(path: str | os.PathLike, default_class: str | None = None):
    """The fast tokenizer of the directory `path` (a checkpoint's, or the one a user named:
    `load_model(..., tokenizer=...)`), made `pad_right`. A directory without tokenizer files
    is a WeightsError.

    The class is the one named in tokenizer_config.json (else `default_class`, else
    AutoTokenizer), rather than always AutoTokenizer, whose config machinery imports torch
    (seconds of start-up, and torch is no dependency of dirjax).
    """
    import transformers

    path = Path(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise WeightsError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
                           "add them, or name a tokenizer (config.tokenizer / "
                           "load_model(..., tokenizer=DIR_OR_HUB_ID))")
    config_file = path / "tokenizer_config.json"
    try:
        name = (json.loads(config_file.read_text()).get("tokenizer_class")
                if config_file.exists() else None) or default_class
    except ValueError as e:
        raise WeightsError(f"{config_file} is not valid JSON: {e}") from None
    cls = getattr(transformers, name.removesuffix("Fast") + "Fast", None) if name else None
    try:
        tok = (cls or transformers.AutoTokenizer).from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
    if len(tok) < 2:
        raise WeightsError(f"{path}: the tokenizer has {len(tok)} token(s): not a usable tokenizer")
    return pad_right(tok)


def pad_right(tok):
    """`tok` padding on the right (our models assume it), with a pad token: eos when it has
    none (GPT-2, Llama), harmless because the attention mask hides pad positions."""
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
