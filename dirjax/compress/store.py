"""Save and load a compressed embedding: a directory with its packed arrays and `meta.json`.

    DIR/arrays/embedding.safetensors   the module's `export()` arrays, in the packed form its
                     `storage_bytes()` counts (codes bit-packed at their widths, fp16 scales,
                     ...), e.g. {"codes" [V, k], "weight" [k, d], "bias" [d]} for a
                     CompressedEmbedding; so the file is the promised size (plus a header of a
                     few hundred bytes)
    DIR/meta.json    class, method, rate, vocab_size, features, the class's static fields
                     (rank, group, seed, ...), metrics, meta, and the caller's own fields

Written into a temporary sibling directory and renamed into place, so DIR is either the
old result or the new one, never half of one. Directories of the earlier formats (Orbax
arrays under DIR/arrays/, quantised codes unpacked) are still read.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dirjax.errors import WeightsError
from dirjax.fileio import atomic_dir

FORMAT = "dirjax.compressed/3"
ORBAX_FORMATS = ("dirjax.compressed/1", "dirjax.compressed/2")   # arrays in an Orbax checkpoint
ARRAYS = "arrays/embedding.safetensors"


def _classes() -> dict:
    """The embedding classes a directory can hold, by name."""
    from dirjax.compress import CompressedEmbedding
    from dirjax.compress.quantize import QuantizedEmbedding
    from dirjax.compress.vq import VQEmbedding
    return {c.__name__: c for c in (CompressedEmbedding, QuantizedEmbedding, VQEmbedding)}


def save_compressed(emb, directory, meta: dict | None = None) -> Path:
    """Write `emb` (a CompressedEmbedding, QuantizedEmbedding or VQEmbedding) to `directory`,
    replacing what is there."""
    from safetensors.numpy import save_file
    from dirjax.embedding import compression_rate
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    arrays, static = emb.export()
    info = {"format": FORMAT, "class": type(emb).__name__, "method": emb.method,
            "rate": compression_rate(emb), "storage_bytes": int(emb.storage_bytes()),
            "vocab_size": emb.vocab_size, "features": emb.features, **static,
            "metrics": emb.metrics, "meta": emb.meta, **(meta or {})}
    json.dumps(info)  # fail on a non-JSON field before anything is written
    with atomic_dir(directory) as tmp:
        (tmp / ARRAYS).parent.mkdir()
        save_file({n: np.ascontiguousarray(a) for n, a in arrays.items()}, str(tmp / ARRAYS))
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory


def arrays_bytes(directory) -> int:
    """Bytes on disk of a saved embedding's arrays (what its rate is about)."""
    return sum(f.stat().st_size for f in (Path(directory) / "arrays").rglob("*") if f.is_file())


def load_compressed(directory):
    """The compressed embedding saved in `directory`; WeightsError when it is not one."""
    directory = Path(directory)
    meta_file = directory / "meta.json"
    try:
        info = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{directory} is not a saved compressed embedding (no meta.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{meta_file} is not a saved embedding's metadata")
    classes = _classes()
    if info.get("format") == "dirjax.compressed/1":   # first format: low rank only
        info = {**info, "class": "CompressedEmbedding"}
    if info.get("format") not in (FORMAT, *ORBAX_FORMATS) or info.get("class") not in classes:
        raise WeightsError(f"{meta_file}: unknown format {info.get('format')!r} / "
                           f"class {info.get('class')!r}")
    arrays = _read_safetensors(directory) if info["format"] == FORMAT else _read_orbax(directory)
    try:
        emb = classes[info["class"]].restore(arrays, info, method=info["method"],
                                             metrics=info.get("metrics"), meta=info.get("meta"))
    except WeightsError as e:
        raise WeightsError(f"{directory}: {e}") from None
    except (KeyError, ValueError, TypeError, IndexError) as e:  # arrays that do not fit meta.json
        raise WeightsError(f"{directory}: its arrays do not match meta.json "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if (emb.vocab_size, emb.features) != (info["vocab_size"], info["features"]):
        raise WeightsError(f"{directory}: arrays give {emb.vocab_size}x{emb.features}, "
                           f"meta.json says {info['vocab_size']}x{info['features']}")
    return emb


def _read_safetensors(directory: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return dict(load_file(str(directory / ARRAYS)))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {directory / ARRAYS}: {str(e).splitlines()[0]}") from None


def _read_orbax(directory: Path) -> dict:
    import orbax.checkpoint as ocp
    try:
        with ocp.StandardCheckpointer() as ckpt:
            arrays = ckpt.restore((directory / "arrays").absolute())
    except Exception as e:  # orbax raises assorted types for missing/corrupt files
        raise WeightsError(f"cannot read {directory / 'arrays'}: {str(e).splitlines()[0]}") from None
    return {n: np.asarray(a) for n, a in arrays.items()}
