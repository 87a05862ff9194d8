"""Save and load a compressed embedding: a directory with its packed arrays and `meta.json`.

    DIR/arrays/embedding.safetensors   the module's `export()` arrays, in the packed form its
                     `storage_bytes()` counts (codes bit-packed at their widths, fp16 scales,
                     ...), e.g. {"codes" [V, k], "weight" [k, d], "bias" [d]} for a
                     CompressedEmbedding; so the file is the promised size (plus a header of a
                     few hundred bytes)
    DIR/meta.json    class, method, rate, vocab_size, features, the class's static fields
                     (rank, group, seed, ...), metrics, meta, and the caller's own fields

The class is found again by its name in the method registry (`dirjax.compress`,
`register_method(..., module=...)`), so a method registered at run time saves and loads like
the built-in ones. Written into a temporary sibling directory and renamed into place, so DIR
is either the old result or the new one, never half of one. Directories of the earlier
formats (Orbax arrays under DIR/arrays/, quantised codes unpacked) are still read.

Read back only after checks, each a one-line WeightsError: the arrays file against the digest
meta.json holds (`arrays_digest`, blake2b of its bytes: a flipped byte is caught, not decoded
into a wrong table), then meta.json's sizes against the arrays (`check_fields`: counts are
positive integers, vocab and features no more than the stored bits could describe, groups
divide the features, arrays have the shapes the fields give) before a class allocates
anything by them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dirjax.compress.registry import check_savable, embedding_class
from dirjax.embedding import compression_rate
from dirjax.errors import WeightsError
from dirjax.fileio import atomic_dir

FORMAT = "dirjax.compressed/3"
ORBAX_FORMATS = ("dirjax.compressed/1", "dirjax.compressed/2")   # arrays in an Orbax checkpoint
ARRAYS = "arrays/embedding.safetensors"


def save_compressed(emb, directory, meta: dict | None = None) -> Path:
    """Write `emb` (the module of a registered method) to `directory`, replacing what is
    there; ConfigError, before anything is written, when its class could not be read back."""
    from safetensors.numpy import save_file
    check_savable(emb)
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
        info["arrays_digest"] = file_digest(tmp / ARRAYS)
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory


def file_digest(path) -> str:
    """Hex blake2b (20 bytes) of a file's bytes."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def arrays_bytes(directory) -> int:
    """Bytes on disk of a saved embedding's arrays (what its rate is about)."""
    return sum(f.stat().st_size for f in (Path(directory) / "arrays").rglob("*") if f.is_file())


def load_compressed(directory):
    """The compressed embedding saved in `directory`; WeightsError when it is not one."""
    directory = Path(directory)
    info, cls = _read_meta(directory / "meta.json")
    arrays = _read_safetensors(directory, info) if info["format"] == FORMAT else \
        _read_orbax(directory)
    check_fields(info, arrays, directory / "meta.json")
    try:
        emb = cls.restore(arrays, info, method=info["method"], metrics=info.get("metrics"),
                          meta=info.get("meta"))
    except WeightsError as e:
        raise WeightsError(f"{directory}: {e}") from None
    except (KeyError, ValueError, TypeError, IndexError, ArithmeticError,
            MemoryError) as e:  # arrays that do not fit meta.json, which check_fields missed
        raise WeightsError(f"{directory}: its arrays do not match meta.json ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if (emb.vocab_size, emb.features) != (info["vocab_size"], info["features"]):
        raise WeightsError(f"{directory}: arrays give {emb.vocab_size}x{emb.features}, "
                           f"meta.json says {info['vocab_size']}x{info['features']}")
    return emb


def _read_meta(meta_file: Path) -> tuple[dict, type]:
    """(meta.json's fields, the registered class it names)."""
    try:
        info = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{meta_file.parent} is not a saved compressed embedding "
                           "(no meta.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{meta_file} is not a saved embedding's metadata")
    if info.get("format") == "dirjax.compressed/1":   # first format: low rank only
        info = {**info, "class": "CompressedEmbedding"}
    name, method = info.get("class"), info.get("method")
    if info.get("format") not in (FORMAT, *ORBAX_FORMATS) or not isinstance(name, str):
        raise WeightsError(f"{meta_file}: unknown format {info.get('format')!r} / "
                           f"class {name!r}")
    try:
        return info, embedding_class(name, method if isinstance(method, str) else None)
    except WeightsError as e:
        raise WeightsError(f"{meta_file}: {e}") from None


def read_meta(directory) -> dict:
    """meta.json of the saved embedding in `directory` (its class registered); WeightsError
    when it is not one."""
    return _read_meta(Path(directory) / "meta.json")[0]


def _read_safetensors(directory: Path, info: dict) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    file = directory / ARRAYS
    want = info.get("arrays_digest")   # absent in folders saved before it was written
    try:
        if want is not None and file_digest(file) != want:
            raise WeightsError(f"{file} is damaged: its bytes are not those saved (digest "
                               "differs from meta.json's arrays_digest)")
        return dict(load_file(str(file)))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {file}: {str(e).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- checks

def _count(info: dict, name: str, where, low: int = 1, high: int | None = None) -> int:
    value = info.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or \
            (high is not None and value > high):
        bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise WeightsError(f"{where}: {name} is {value!r}, not {bound}")
    return value


def _shape(arrays: dict, name: str, shape: tuple, where) -> None:
    if name in arrays and tuple(arrays[name].shape) != tuple(shape):
        raise WeightsError(f"{where}: array {name} is {list(arrays[name].shape)}, meta.json's "
                           f"sizes give {list(shape)}")


def check_fields(info: dict, arrays: dict, where) -> None:
    """WeightsError (one line) unless meta.json's static fields are sane and fit `arrays`,
    checked before a class's `restore` allocates anything by them. Generic, by the field and
    array names the classes share: vocab_size / features (and their copies vocab / features)
    positive and at most the stored bits (every row and every feature costs at least one bit
    in any of the forms); rank, group, width, tiers' (group, bits) positive, groups dividing
    the features; the arrays named codes / weight / bias / mean / scale / offset / gain /
    book_<t> of the shapes these give. Fields and arrays of other names (a class registered
    at run time) are its own `restore`'s to check."""
    bits = 8 * sum(int(np.asarray(a).nbytes) for a in arrays.values())
    v = _count(info, "vocab_size", where, high=max(bits, 1))
    d = _count(info, "features", where, high=max(bits, 1))
    for name, want in (("vocab", v), ("features", d)):
        if name in info and info[name] != want:
            raise WeightsError(f"{where}: {name} is {info[name]!r}, vocab_size x features "
                               f"say {v}x{d}")
    if info.get("seed") is not None:
        _count(info, "seed", where, low=0)
    if info.get("rank") is not None:
        k = _count(info, "rank", where, high=min(v, d))
        _shape(arrays, "codes", (v, k), where)
        _shape(arrays, "weight", (k, d), where)
    _shape(arrays, "bias", (d,), where)
    _shape(arrays, "mean", (d,), where)
    if info.get("group") is not None:
        g = _count(info, "group", where, high=d)
        if d % g:
            raise WeightsError(f"{where}: group {g} does not divide features {d}")
        _shape(arrays, "scale", (v, d // g), where)
        _shape(arrays, "offset", (v, d // g), where)
    if info.get("width") is not None:
        _count(info, "width", where, high=32)
    if "tiers" in info:
        tiers, rows = info["tiers"], info.get("rows_per_tier")
        if not isinstance(tiers, list) or not tiers or not isinstance(rows, list) or \
                len(rows) != len(tiers):
            raise WeightsError(f"{where}: tiers {tiers!r} / rows_per_tier {rows!r} are not "
                               "two lists of one length")
        for t, (tier, n) in enumerate(zip(tiers, rows)):
            if not isinstance(tier, list) or len(tier) != 2:
                raise WeightsError(f"{where}: tier {t} is {tier!r}, not [group, bits]")
            g = _count({"group": tier[0]}, "group", where, high=d)
            b = _count({"bits": tier[1]}, "bits", where, high=16)
            _count({"rows": n}, "rows", where, low=0, high=v)
            if d % g:
                raise WeightsError(f"{where}: tier {t}'s group {g} does not divide features {d}")
            _shape(arrays, f"book_{t}", (1 << b, g), where)
        if sum(rows) != v:
            raise WeightsError(f"{where}: rows_per_tier add up to {sum(rows)}, not vocab {v}")
        _shape(arrays, "gain", (v,), where)


def _read_orbax(directory: Path) -> dict:
    import orbax.checkpoint as ocp
    try:
        with ocp.StandardCheckpointer() as ckpt:
            arrays = ckpt.restore((directory / "arrays").absolute())
    except Exception as e:  # orbax raises assorted types for missing/corrupt files
        raise WeightsError(f"cannot read {directory / 'arrays'}: "
                           f"{str(e).splitlines()[0]}") from None
    return {n: np.asarray(a) for n, a in arrays.items()}
