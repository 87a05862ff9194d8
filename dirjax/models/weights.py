"""Reading checkpoints: safetensors only (never unpickle), plus shape-checked assignment."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dirjax.errors import WeightsError


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
