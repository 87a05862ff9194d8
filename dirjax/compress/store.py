"""Save and load a compressed embedding: a directory with the arrays (Orbax) and `meta.json`.

    DIR/arrays/      Orbax StandardCheckpointer: the module's `export()` arrays, e.g.
                     {"codes" [V, k], "weight" [k, d], "bias" [d]} for a CompressedEmbedding
    DIR/meta.json    class, method, rate, vocab_size, features, the class's static fields
                     (rank, group, seed, ...), metrics, meta, and the caller's own fields

Written into a temporary sibling directory and renamed into place, so DIR is either the
old result or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dirjax.errors import WeightsError

FORMAT = "dirjax.compressed/2"


def _classes() -> dict:
    """The embedding classes a directory can hold, by name."""
    from dirjax.compress import CompressedEmbedding
    from dirjax.compress.quantize import QuantizedEmbedding
    return {c.__name__: c for c in (CompressedEmbedding, QuantizedEmbedding)}


def save_compressed(emb, directory, meta: dict | None = None) -> Path:
    """Write `emb` (a CompressedEmbedding or QuantizedEmbedding) to `directory`, replacing
    what is there."""
    import orbax.checkpoint as ocp
    from dirjax.embedding import compression_rate
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    arrays, static = emb.export()
    info = {"format": FORMAT, "class": type(emb).__name__, "method": emb.method,
            "rate": compression_rate(emb), "vocab_size": emb.vocab_size,
            "features": emb.features, **static,
            "metrics": emb.metrics, "meta": emb.meta, **(meta or {})}
    json.dumps(info)  # fail on a non-JSON field before anything is written
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "arrays", arrays)
            ckpt.wait_until_finished()
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` is moved aside first and removed after."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_compressed(directory):
    """The compressed embedding saved in `directory`; WeightsError when it is not one."""
    import orbax.checkpoint as ocp
    directory = Path(directory)
    meta_file = directory / "meta.json"
    try:
        info = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{directory} is not a saved compressed embedding (no meta.json)") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{meta_file} is not valid JSON: {e}") from None
    classes = _classes()
    if info.get("format") == "dirjax.compressed/1":   # first format: low rank only
        info = {**info, "format": FORMAT, "class": "CompressedEmbedding"}
    if info.get("format") != FORMAT or info.get("class") not in classes:
        raise WeightsError(f"{meta_file}: unknown format {info.get('format')!r} / "
                           f"class {info.get('class')!r}")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            arrays = ckpt.restore((directory / "arrays").absolute())
    except Exception as e:  # orbax raises assorted types for missing/corrupt files
        raise WeightsError(f"cannot read {directory / 'arrays'}: {str(e).splitlines()[0]}") from None
    arrays = {n: np.asarray(a) for n, a in arrays.items()}
    if arrays["codes"].shape[0] != info["vocab_size"]:
        raise WeightsError(f"{directory}: codes {arrays['codes'].shape} do not match meta.json")
    emb = classes[info["class"]].restore(arrays, info, method=info["method"],
                                         metrics=info.get("metrics"), meta=info.get("meta"))
    if (emb.vocab_size, emb.features) != (info["vocab_size"], info["features"]):
        raise WeightsError(f"{directory}: arrays give {emb.vocab_size}x{emb.features}, "
                           f"meta.json says {info['vocab_size']}x{info['features']}")
    return emb
