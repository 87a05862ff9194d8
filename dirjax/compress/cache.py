"""The compression cache of a work directory: one saved embedding per content key.

    <workdir>/embeddings/<method>-rate<r>-<key[:12]>/        a saved embedding (store.py)
    <workdir>/embeddings/<method>-rate<r>-<key[:12]>.train/  an AE's Orbax checkpoints until saved

The key is a digest of everything that changes the result: the table's bytes, the method,
the rate, its options, and for calibrated methods the calibration (the whole model's weights,
the calibration text, its settings). So a rerun reuses a finished compression only when it
would compute the same one, whatever the model's path or name, and an overwritten checkpoint
or another calibration text gets a fresh one. Both jobs (eval, finetune) share this cache.

A saved embedding that cannot be read (a damaged disk, a hand-edited file) is set aside as
`.<name>.bad-<pid>` with a warning and made again; temporary folders of saves that a kill
interrupted are removed when the cache is opened (the work directory is locked by then).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from dirjax.compress import store
from dirjax.errors import DirjaxError, WeightsError


def digest(*parts) -> str:
    """Hex blake2b of JSON-able parts, numpy/jax arrays (dtype, shape, bytes) and bytes."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        if hasattr(part, "shape") and hasattr(part, "dtype"):
            a = np.ascontiguousarray(np.asarray(part))
            h.update(f"array {a.dtype} {a.shape};".encode())
            h.update(memoryview(a.reshape(-1).view(np.uint8)))
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


def model_fingerprint(model, skip: tuple[str, ...] = ()) -> str:
    """Digest of every array of `model` (parameters and buffers), in graph order, but those
    under the top-level attributes `skip` (dirjax.saved skips "embedding": the rest is what a
    saved model's source must give back)."""
    from flax import nnx
    _, state = nnx.split(model)
    h = hashlib.blake2b(digest_size=20)
    for path, leaf in nnx.to_flat_state(state):
        if path[0] in skip:
            continue
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        h.update(".".join(map(str, path)).encode())
        h.update(digest(value).encode() if hasattr(value, "shape") else repr(value).encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Digest of a tokenizer's full definition (fast tokenizers), else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return digest(backend.to_str())
    return digest(sorted(tokenizer.get_vocab().items()))


def compression_key(table_digest: str, method: str, rate: float, options: dict,
                    calibration: dict | None = None) -> str:
    """The content key of a compression (see the module docstring)."""
    return digest({"table": table_digest, "method": method, "rate": float(rate),
                   "options": options, "calibration": calibration})


class CompressionCache:
    """Finished compressions of one work directory, by content key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.is_dir():   # leftovers of saves a kill interrupted (the workdir is locked)
            for stale in self.root.glob(".*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)

    def path(self, method: str, rate: float, key: str) -> Path:
        return self.root / f"{method}-rate{rate:g}-{key[:12]}"

    def get_or_make(self, method: str, rate: float, key: str, make, meta: dict):
        """(embedding, compress seconds, reused?). `make(train_dir)` computes the embedding
        when no readable saved one has this key; it is saved with `meta` before returning."""
        directory = self.path(method, rate, key)
        train_dir = directory.with_name(directory.name + ".train")
        if (directory / "meta.json").exists():
            try:
                emb = store.load_compressed(directory)
                if emb.meta.get("cache_key") == key:
                    # a kill between the save and this cleanup left the AE's checkpoints
                    shutil.rmtree(train_dir, ignore_errors=True)
                    return emb, float(emb.meta.get("compress_seconds", 0.0)), True
                reason = "it was made from other inputs"
            except WeightsError as e:
                reason = str(e)
            bad = directory.with_name(f".{directory.name}.bad-{time.time_ns()}")
            directory.rename(bad)
            warnings.warn(f"saved compression {directory} is set aside ({reason}); "
                          "making it again", RuntimeWarning, stacklevel=2)
            shutil.rmtree(bad, ignore_errors=True)
        start = time.perf_counter()
        emb = make(train_dir)
        seconds = time.perf_counter() - start
        emb.meta = {**emb.meta, "cache_key": key, "compress_seconds": seconds}
        try:
            store.save_compressed(emb, directory, meta)
        except DirjaxError:   # a module that is not its method's registered class: as it is
            raise
        except OSError as e:
            raise DirjaxError(f"cannot save the compression to {directory}: "
                              f"{e.strerror or e}") from None
        except Exception as e:   # Orbax wraps a full disk in its own error types
            raise DirjaxError(f"cannot save the compression to {directory}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        shutil.rmtree(train_dir, ignore_errors=True)
        return emb, seconds, False
