"""Save and load a `CompressedEmbedding`: a directory with the arrays (Orbax) and `meta.json`.

    DIR/arrays/      Orbax StandardCheckpointer: {"codes" [V, k], "weight" [k, d], "bias" [d]}
    DIR/meta.json    method, rank, rate, vocab_size, features, metrics, meta, and the caller's
                     own fields (source model, ...)

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

FORMAT = "dirjax.compressed/1"


def save_compressed(emb, directory, meta: dict | None = None) -> Path:
    """Write `emb` (a CompressedEmbedding) to `directory`, replacing what is there."""
    import orbax.checkpoint as ocp
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, "method": emb.method, "rank": emb.rank, "rate": emb.rate,
            "vocab_size": emb.vocab_size, "features": emb.features,
            "metrics": dict(emb.metrics), "meta": dict(emb.meta), **(meta or {})}
    json.dumps(info)  # fail on a non-JSON field before anything is written
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        arrays = {name: np.asarray(getattr(emb, name)[...]) for name in ("codes", "weight", "bias")}
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
    """The CompressedEmbedding saved in `directory`; WeightsError when it is not one."""
    import orbax.checkpoint as ocp
    from dirjax.compress import CompressedEmbedding
    directory = Path(directory)
    meta_file = directory / "meta.json"
    try:
        info = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{directory} is not a saved compressed embedding (no meta.json)") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{meta_file} is not valid JSON: {e}") from None
    if info.get("format") != FORMAT:
        raise WeightsError(f"{meta_file}: unknown format {info.get('format')!r}")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            arrays = ckpt.restore((directory / "arrays").absolute())
    except Exception as e:  # orbax raises assorted types for missing/corrupt files
        raise WeightsError(f"cannot read {directory / 'arrays'}: {str(e).splitlines()[0]}") from None
    codes, weight, bias = (np.asarray(arrays[n]) for n in ("codes", "weight", "bias"))
    if codes.shape != (info["vocab_size"], info["rank"]) or weight.shape != (info["rank"], info["features"]):
        raise WeightsError(f"{directory}: arrays {codes.shape}, {weight.shape} do not match meta.json")
    return CompressedEmbedding(codes, weight, bias, method=info["method"],
                               metrics=info.get("metrics"), meta=info.get("meta"))
