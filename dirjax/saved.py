"""A compressed model as one folder (`save_model`, read back by `load_model`), its export to an
ordinary Hugging Face checkpoint (`export_hf`), and `load_model`, dirjax's one loader: a saved
folder here, every other source through dirjax.models.load_model.

    save_model(model, DIR)            DIR/dirjax_model.json   the source reference (alias, local
                                                              path, .gguf or Hub id), dtype,
                                                              output, method, rate, metrics, and
                                                              what a load checks: a fingerprint
                                                              of the weights the source must
                                                              give back, of its tokenizer, and a
                                                              digest of embedding/'s files
                                      DIR/embedding/          the compressed embedding in its
                                                              packed saved form (compress/store.py)
    save_model(..., portable=True)    DIR/weights/            also: the source's other weights
                                                              (config.json, tokenizer files,
                                                              model.safetensors without the
                                                              token table): loads with no source
    load_model(DIR)                   loads the source (or DIR/weights), checks the fingerprints
                                      and swaps the saved embedding in (nothing is recompressed;
                                      the source's own table is not needed): the same model,
                                      the same logits. `source=` points at a source that moved.
    load_model(SOURCE, embedding=E)   SOURCE's model with a compressed embedding saved by
                                      store.save_compressed (a run's <workdir>/embeddings/NAME)
                                      swapped in, `output` tied or original
    export_hf(model, DIR)             DIR/config.json, tokenizer files, model.safetensors: the
                                      source's weights with the reconstructed table
                                      (`embedding.table()`, fp32) in place of the original;
                                      transformers loads it as an ordinary model

Every check runs whatever `dtype` a load asks for: the weights are compared as they were saved
(loaded in float32, which every loader rounds from, and cast to the saved dtype when it asks
for another), so a changed source never loads silently. A model remembers where it came from:
`load_model` records its source, dtype, tokenizer override and tokenizer fingerprint
(`origin(model)`, dirjax/models/__init__.py). Sources are resolved there too (`resolve_source`),
and each model file names its Hugging Face tensors (`PREFIXES`, `EMBEDDING`, `HEADS`), which
the export and the portable save read. Both writers write into a temporary sibling folder that
takes the name in one rename (dirjax/fileio.py); a failed write is one line and leaves the old
folder whole.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dirjax import models
from dirjax.compress import store
from dirjax.compress.cache import digest, model_fingerprint, tokenizer_fingerprint
from dirjax.embedding import compression_rate, swap_embedding
from dirjax.errors import ConfigError, DirjaxError, WeightsError
from dirjax.fileio import atomic_dir
from dirjax.models import (
    dtype_name,
    family_module,
    family_of,
    origin,
    remember_origin,
    resolve_source,
    resolve_tokenizer,
    source_ref,
)
from dirjax.models.gguf import gguf_tokenizer, read_gguf
from dirjax.models.tokenizer_export import save_export_tokenizer, source_tokenizer
from dirjax.models.weights import load_tokenizer, read_config, read_safetensors

MODEL_FILE = "dirjax_model.json"
FORMAT = "dirjax.model/2"
# /1 (before 2026-12-03): no tokenizer fingerprint, no embedding digest, no portable weights
FORMATS = ("dirjax.model/1", FORMAT)
EMBEDDING_DIR = "embedding"
WEIGHTS_DIR = "weights"             # a portable save's other weights
EXPORT_MARK = "dirjax.export/1"     # in model.safetensors' metadata: a folder export_hf wrote
WEIGHTS_MARK = "dirjax.weights/1"   # in weights/model.safetensors' metadata
OUTPUTS = ("tied", "original")
# files copied from a Hugging Face source into an export (the tokenizer and generation defaults)
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
          "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "added_tokens.json",
          "generation_config.json", "chat_template.jinja")
# the tokenizer class a family's from_hf_dir falls back to when tokenizer_config.json names none
TOKENIZER_CLASS = {"gpt2": "GPT2Tokenizer", "bert": "BertTokenizer"}


# ----------------------------------------------------------------------------- load

def load_model(model: str | os.PathLike, /, dtype=None,
               tokenizer: str | os.PathLike | None = None, *,
               source: str | os.PathLike | None = None,
               embedding: str | os.PathLike | None = None, output: str | None = None):
    """Load `model` as a Flax NNX model and its tokenizer: `(model, tokenizer)`.

    `model`: a folder written by `save_model` (the saved compressed model: its source loaded,
    checked, the saved embedding swapped in), or any source of `dirjax.models.load_model` (an
    alias, a local checkpoint directory, a .gguf file, a Hub id). Parameters in float32 unless
    `dtype` says otherwise (a saved folder: its saved dtype). The tokenizer is the checkpoint's
    own, or `tokenizer` (a tokenizer directory or Hub id) when given; one that differs from a
    saved folder's is used with a warning.

    `source`: a saved folder's source when it is not where the save found it (moved, copied);
    the fingerprint is checked all the same.
    `embedding`: a folder written by `dirjax.compress.save_compressed`, e.g. a run's
    `<workdir>/embeddings/NAME`, swapped into the model `model` names with `output` ("tied",
    the default, or "original"): `swap_embedding(load_model(model)[0], load_compressed(
    embedding), output)`, checked against the table it was made from where its meta.json
    records that (runs do).
    """
    want = dtype_name(dtype)     # a bad dtype is one line before anything is read
    if output is not None and output not in OUTPUTS:
        raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if embedding is not None:
        if source is not None:
            raise ConfigError("source= is a saved folder's; with embedding= the first argument "
                              "is the model's source")
        return load_with_embedding(model, embedding, output=output or "tied", dtype=want,
                                   tokenizer=tokenizer)
    if output is not None:
        raise ConfigError("output= goes with embedding= (a saved folder keeps its own output)")
    if is_saved_model(model):
        return load_saved_model(model, dtype=want, tokenizer=tokenizer, source=source)
    if source is not None:
        raise ConfigError(f"source= tells a saved folder where its source is now, and {model} "
                          f"is not a folder written by dirjax.save_model (no {MODEL_FILE})")
    return _load_source(model, want, tokenizer)


def _load_source(source, dtype, tokenizer):
    """(model, tokenizer) of a source: a portable save's weights folder, else what
    dirjax.models.load_model reads. The model's origin also holds its tokenizer's fingerprint
    (what save_model stores)."""
    weights = _weights_of(source)
    if weights is not None:
        model, tok = _load_weights(*weights, dtype, tokenizer)
    else:
        model, tok = models.load_model(source, dtype=dtype, tokenizer=tokenizer)
    _note(model, tokenizer_fingerprint=tokenizer_fingerprint(tok))
    return model, tok


def _note(model, **fields) -> None:
    """Add `fields` to the origin `model` remembers."""
    model.origin = json.dumps({**origin(model), **fields}, sort_keys=True)


def _as_saved(name: str | None) -> str | None:
    """A dtype name as saved: float32 is the loaders' default, None."""
    return None if name in (None, "float32") else name


def _cast(model, dtype: str | None):
    """A copy of `model` with every floating array in `dtype` (None: float32); `model` itself
    when they already are. Loaders round a float32 copy of the checkpoint to their dtype, so
    casting a float32-loaded model gives exactly what loading in `dtype` gives."""
    to = jnp.dtype(dtype or "float32")
    graphdef, state = nnx.split(model)
    leaves = jax.tree.leaves(state)
    if all(not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == to for x in leaves):
        return model
    state = jax.tree.map(lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                         state)
    return nnx.merge(graphdef, state)


def _verified(load, want: str | None, saved: str | None, check):
    """`load(dtype) -> (model, tokenizer)` in the dtype `want`, after `check(model)` on the
    model in the dtype `saved` (what a fingerprint or digest was taken of). One load when they
    agree; else one float32 load, checked cast to `saved`, returned cast to `want`."""
    want, saved = _as_saved(want), _as_saved(saved)
    if want == saved:
        model, tok = load(want)
        check(model)
        return model, tok
    model, tok = load(None)
    check(_cast(model, saved))
    model = _cast(model, want)
    _note(model, dtype=want)
    return model, tok


# ----------------------------------------------------------------------------- the model in hand

def _model_dtype(model) -> str | None:
    """The dtype of the model's first floating parameter outside the embedding (None: fp32)."""
    _, state = nnx.split(model)
    for path, leaf in nnx.to_flat_state(state):
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        floating = jnp.issubdtype(getattr(value, "dtype", np.int32), jnp.floating)
        if path[0] != "embedding" and floating:
            name = jnp.dtype(value.dtype).name
            return None if name == "float32" else name
    return None


def output_of(model) -> str:
    """"tied" when the LM head uses the (compressed) input embedding, else "original"."""
    if model.out_embedding is model.embedding:
        return "tied"
    if model.out_embedding is not None and hasattr(model.out_embedding, "export"):
        raise ConfigError("the model's output head holds a compressed embedding of its own; "
                          "save_model / export_hf know the input embedding, tied or not")
    return "original"


def fingerprint(model) -> str:
    """Digest of every array of `model` except its input embedding's (the head included when
    it is not the input embedding): what the source must give back on load."""
    return model_fingerprint(model, skip=("embedding",))


def _compressed(model):
    emb = model.embedding
    if not hasattr(emb, "export"):
        raise ConfigError(f"the model's embedding is a {type(emb).__name__}, not a compressed one "
                          "(dirjax.compress.compress + dirjax.swap_embedding make one)")
    return emb


def _source_of(model, source) -> dict:
    got = origin(model)
    if source is not None:
        got = {**got, "source": source_ref(source)}
    if not got.get("source"):
        raise ConfigError("the model does not know its source (it was not made by "
                          "dirjax.load_model): pass source= (an alias, a local checkpoint "
                          "directory, a .gguf file or a Hub id)")
    return got


def _tokenizer_of(source, override):
    """The tokenizer `load_model(source, tokenizer=override)` gives, without its weights."""
    weights = _weights_of(source)
    path = weights[0] if weights else resolve_source(source)
    if path.is_file():   # a .gguf
        return load_tokenizer(resolve_tokenizer(override)) if override else gguf_tokenizer(path)
    default = TOKENIZER_CLASS.get(family_of(read_config(path), str(path)))
    return load_tokenizer(resolve_tokenizer(override) if override else path, default_class=default)


# ----------------------------------------------------------------------------- save / load

def is_saved_model(path) -> bool:
    try:
        return (Path(path) / MODEL_FILE).is_file()
    except (TypeError, OSError):
        return False


def save_model(model, directory, *, source=None, meta: dict | None = None,
               portable: bool = False) -> Path:
    """Write the compressed `model` (from `swap_embedding`) to the folder `directory`.

    Holds the model's source reference (`source`, default: where `load_model` found it), its
    dtype, the output choice (tied / original head, read off the model), the compressed
    embedding packed as its rate promises (`dirjax.compress.store`), metadata (method, rate,
    metrics, `meta`), and what a load checks: fingerprints of the other weights and of the
    tokenizer, a digest of the embedding's files. `portable=True` also writes the source's
    other weights, config and tokenizer (DIR/weights/, the token table left out unless the
    head keeps it), so the folder loads with no source at all (checked against the model
    before anything is written). `dirjax.load_model(directory)` gives the same model back. An
    existing folder is replaced only when it is a saved model itself (a symbolic link to one
    stays a link: what it points to is replaced).
    """
    emb = _compressed(model)
    where = _source_of(model, source)
    output = output_of(model)
    try:
        meta = json.loads(json.dumps(dict(meta or {})))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_model's meta must be a dict of JSON values: {e}") from None
    directory = _target(directory, is_saved_model, "a model saved by dirjax.save_model")
    dtype = _model_dtype(model)
    weights = _portable_weights(model, emb, output, where, dtype) if portable else None
    tok_fp = where.get("tokenizer_fingerprint")
    if tok_fp is None:   # a model dirjax.load_model did not load: its source's tokenizer
        tok_fp = tokenizer_fingerprint(_tokenizer_of(where["source"], where.get("tokenizer")))
    info = {
        "format": FORMAT, "source": where["source"], "dtype": dtype,
        "tokenizer": where.get("tokenizer"), "tokenizer_fingerprint": tok_fp,
        "family": type(model).__name__, "output": output, "method": getattr(emb, "method", ""),
        "rate": compression_rate(emb), "storage_bytes": int(emb.storage_bytes()),
        "vocab_size": emb.vocab_size, "features": emb.features,
        "metrics": getattr(emb, "metrics", {}), "fingerprint": fingerprint(model),
        "embedding_digest": None, "weights": None if weights is None else weights["info"],
        "meta": meta,
    }
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:   # the embedding's own metrics
        raise ConfigError(f"cannot save {directory}: a field is not JSON ({e})") from None
    with _written(directory) as tmp:
        store.save_compressed(emb, tmp / EMBEDDING_DIR)
        info["embedding_digest"] = _files_digest(tmp / EMBEDDING_DIR)
        if weights is not None:
            _write_weights(tmp / WEIGHTS_DIR, weights, where.get("tokenizer"), tok_fp)
        (tmp / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


@contextlib.contextmanager
def _written(directory: Path):
    """`atomic_dir(directory)`, a failed write (a full disk, no permission) one line."""
    try:
        with atomic_dir(directory) as tmp:
            yield tmp
    except DirjaxError:
        raise
    except (OSError, SafetensorError) as e:
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise DirjaxError(f"cannot write {directory}: {why} (nothing was changed)") from None


def _target(directory, ours, what: str) -> Path:
    """`directory` made absolute, its parent created; an existing non-empty folder that is not
    `ours` is refused (replacing it would delete someone's files). Another writer replacing
    `ours` meanwhile is harmless: the name always holds a whole folder (fileio.atomic_dir)."""
    directory = Path(directory).absolute()
    blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"cannot write {directory}: {blocker} is a file, not a folder")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file, not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not ours(directory):
        raise ConfigError(f"{directory} exists and is not {what}: refusing to replace it")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {directory.parent}: {e.strerror or e}") from None
    return directory


def _files_digest(folder: Path) -> str:
    """Digest of the files under `folder`: their paths and bytes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return digest([[p.relative_to(folder).as_posix(), store.file_digest(p)] for p in files])


def read_info(directory) -> dict:
    """The saved model's `dirjax_model.json`; WeightsError (one line) when it is not one, or
    when a field is not what save_model writes."""
    directory = Path(directory)
    file = directory / MODEL_FILE
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{directory} is not a model saved by dirjax.save_model "
                           f"(no {MODEL_FILE})") from None
    except (OSError, ValueError) as e:   # ValueError: bad JSON or bytes that are not UTF-8
        raise WeightsError(f"{file} is damaged: {str(e).splitlines()[0]}") from None
    new = isinstance(info, dict) and info.get("format") == FORMAT
    needed = ("source", "output", "fingerprint") + (
        ("tokenizer_fingerprint", "embedding_digest") if new else ())
    missing = [k for k in needed if not isinstance(info, dict) or k not in info]
    if not isinstance(info, dict) or info.get("format") not in FORMATS or missing:
        why = ("missing " + ", ".join(missing) if missing
               else f"format {info.get('format')!r}")
        raise WeightsError(f"{file}: not a saved model of format {FORMAT} ({why})")
    if info["output"] not in OUTPUTS:
        raise WeightsError(f"{file}: output {info['output']!r} is not one of {OUTPUTS}")
    strings = ["source", "fingerprint"] + (["tokenizer_fingerprint", "embedding_digest"]
                                           if new else [])
    bad = [k for k in strings if not isinstance(info[k], str) or not info[k]]
    bad += [k for k in ("tokenizer", "dtype") if not isinstance(info.get(k), (str, type(None)))]
    if bad:
        raise WeightsError(f"{file}: {', '.join(bad)} is not what save_model writes")
    try:
        dtype_name(info.get("dtype"))
    except ConfigError as e:
        raise WeightsError(f"{file}: {e}") from None
    w = info.get("weights")
    if w is not None and not (
            isinstance(w, dict) and isinstance(w.get("embedding"), str)
            and isinstance(w.get("shape"), list) and len(w["shape"]) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                    for n in w["shape"])):
        raise WeightsError(f"{file}: weights {w!r} is not what save_model writes")
    return info


def _saved_embedding(directory: Path, info: dict):
    """The saved compressed embedding, its files checked against the digest first."""
    folder = directory / EMBEDDING_DIR
    want = info.get("embedding_digest")   # none in format /1
    if want is not None and folder.is_dir() and _files_digest(folder) != want:
        raise WeightsError(f"saved model {directory}: {EMBEDDING_DIR}/ is damaged or changed "
                           "(its files are not those saved: digest differs)")
    emb = store.load_compressed(folder)
    if (emb.vocab_size, emb.features) != (info.get("vocab_size"), info.get("features")):
        raise WeightsError(f"{directory}: the embedding is {emb.vocab_size}x{emb.features}, "
                           f"{MODEL_FILE} says {info.get('vocab_size')}x{info.get('features')}")
    return emb


def load_saved_model(directory, dtype=None, tokenizer=None, *, source=None):
    """(model, tokenizer) of a folder written by `save_model` (what `load_model(directory)`
    returns): the source (`source` when given, DIR/weights when portable, else the saved
    reference) loaded in the saved dtype (or `dtype`), the saved embedding swapped in;
    WeightsError when the folder is damaged or the source now gives other weights or another
    tokenizer than at the save, whatever `dtype` is."""
    directory = Path(directory)
    info = read_info(directory)
    want = dtype_name(dtype) if dtype is not None else info.get("dtype")
    emb = _saved_embedding(directory, info)
    portable = source is None and info.get("weights") is not None
    base = (source_ref(source) if source is not None else
            str((directory / WEIGHTS_DIR).absolute()) if portable else info["source"])
    # a portable save's weights folder holds the tokenizer it was saved with
    saved_tok = None if portable else info.get("tokenizer")

    def load(dt):
        try:
            return _load_source(base, dt, tokenizer or saved_tok)
        except DirjaxError as e:
            raise type(e)(f"saved model {directory}: its source: {e}") from None

    def check(model):
        try:
            small = swap_embedding(model, emb, info["output"])
        except DirjaxError as e:
            raise WeightsError(f"saved model {directory}: {e}") from None
        if fingerprint(small) != info["fingerprint"]:
            raise WeightsError(f"saved model {directory}: its source {base} now gives other "
                               "weights than when it was saved (a changed checkpoint?)")

    model, tok = _verified(load, want, info.get("dtype"), check)
    saved_fp, got_fp = info.get("tokenizer_fingerprint"), origin(model)["tokenizer_fingerprint"]
    if saved_fp is not None and got_fp != saved_fp:
        if tokenizer is None:
            raise WeightsError(f"saved model {directory}: its tokenizer "
                               f"{info.get('tokenizer') or base} is not the one it was saved "
                               "with (pass tokenizer= to use another on purpose)")
        warnings.warn(f"saved model {directory}: using tokenizer {tokenizer}, which is not the "
                      "one it was saved with", UserWarning, stacklevel=3)
    return swap_embedding(model, emb, info["output"]), tok


def load_with_embedding(source, embedding, *, output: str = "tied", dtype=None, tokenizer=None):
    """(model, tokenizer): the model `source` names with the compressed embedding saved in the
    folder `embedding` (store.save_compressed: a run's <workdir>/embeddings/NAME) swapped in,
    `output` "tied" or "original": what `load_model(source, embedding=...)` returns. When the
    embedding's meta.json records the digest of the table it was made from (`table_digest`,
    `table_dtype`: a run's do), the model's table must have it (WeightsError otherwise)."""
    if is_saved_model(source):
        raise ConfigError(f"{source} is a saved model: embedding= goes with the source the "
                          "compression was made from")
    want = dtype_name(dtype)
    info = store.read_meta(embedding)
    emb = store.load_compressed(embedding)
    table_digest = info.get("table_digest")
    try:
        at = dtype_name(info.get("table_dtype")) if table_digest else want
    except ConfigError as e:
        raise WeightsError(f"{embedding}/meta.json: table_dtype: {e}") from None

    def check(model):
        if table_digest and digest(model.embedding.table()) != table_digest:
            raise WeightsError(f"the embedding {embedding} was made from another table than "
                               f"that of {source}")

    model, tok = _verified(lambda dt: _load_source(source, dt, tokenizer), want, at, check)
    try:
        return swap_embedding(model, emb, output), tok
    except DirjaxError as e:
        raise WeightsError(f"the embedding {embedding} does not fit {source}: {e}") from None


# ----------------------------------------------------------------------------- portable weights

def _weights_of(source):
    """(folder, its saved model's info) when `source` is a portable save's weights folder."""
    try:
        path = Path(str(source))
    except TypeError:
        return None
    if path.name != WEIGHTS_DIR or not is_saved_model(path.parent):
        return None
    info = read_info(path.parent)
    return (path, info) if info.get("weights") else None


def _weights_state(folder: Path, info: dict) -> tuple[dict, dict]:
    """(config dict, {HF name: array}) of a weights folder; the token table it leaves out is
    zeros (the compressed embedding replaces it)."""
    w = info["weights"]
    config, state = read_config(folder), read_safetensors(folder)
    if w["embedding"] not in state:
        state[w["embedding"]] = np.zeros(w["shape"], np.float32)
    return config, state


def _load_weights(folder: Path, info: dict, dtype, tokenizer):
    """(model, tokenizer) of a portable save's weights folder, as dirjax.models.load_model
    gives them for a checkpoint folder."""
    config, state = _weights_state(folder, info)
    model = family_module(family_of(config, str(folder))).from_hf_state(config, state, dtype)
    tok = _tokenizer_of(folder, tokenizer)
    remember_origin(model, folder, dtype, tokenizer)
    return model, tok


def _checkpoint(source: str):
    """`_source_checkpoint`, also for a portable save's weights folder."""
    weights = _weights_of(source)
    if weights is None:
        return _source_checkpoint(source)
    folder, info = weights
    config, state = _weights_state(folder, info)

    def copy_files(out: Path):
        for name in COPIED:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
    return config, state, copy_files


def _hf_names(module, state: dict, where: str) -> tuple[str, str | None]:
    """(the token embedding's HF name in `state`, an untied head's or None)."""
    embed_names = [p + module.EMBEDDING for p in module.PREFIXES]
    embed = next((n for n in embed_names if n in state), None)
    if embed is None:
        raise WeightsError(f"{where}: no token embedding tensor ({embed_names[0]})")
    return embed, next((n for n in module.HEADS if n in state), None)


def _check_source(model, emb, output, module, config, state, dtype, where, what: str) -> None:
    """ConfigError unless `state` built in `dtype` with `emb` swapped in is `model`."""
    check = swap_embedding(module.from_hf_state(config, dict(state), dtype), emb, output)
    if fingerprint(check) != fingerprint(model):
        raise ConfigError(f"the model's weights other than its embedding differ from its source "
                          f"{where} ({what} the source's weights)")


def _portable_weights(model, emb, output, where: dict, dtype) -> dict:
    """What `save_model(portable=True)` writes under weights/: the source's tensors but the
    token table (kept when the head still uses it), config, tokenizer writer; checked first
    to build `model` back as a load will (zeros for the table left out)."""
    config, state, write_tokenizer = _checkpoint(where["source"])
    family = family_of(config, where["source"])
    module = family_module(family)
    embed, _ = _hf_names(module, state, where["source"])
    shape = [int(n) for n in state[embed].shape]
    if not (model.tied and output == "original"):    # the head does not use the table
        del state[embed]
        if model.tied:                  # a tied checkpoint may carry a copy as lm_head
            for n in module.HEADS:
                state.pop(n, None)
    placeholder = {} if embed in state else {embed: np.zeros(shape, np.float32)}
    _check_source(model, emb, output, module, config, {**state, **placeholder}, dtype,
                  where["source"], "a portable save writes")
    return {"config": config, "state": state, "write_tokenizer": write_tokenizer,
            "family": family, "info": {"embedding": embed, "shape": shape}}


def _write_weights(out: Path, weights: dict, tokenizer, tok_fp: str) -> None:
    """weights/: tokenizer files (the source's, or the override's the model was loaded with),
    config.json, model.safetensors (fp32 floats); the tokenizer must load back as the model's."""
    out.mkdir()
    if tokenizer:
        src = resolve_tokenizer(tokenizer)
        for name in COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    else:
        weights["write_tokenizer"](out)
    config = weights["config"]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({n: np.ascontiguousarray(a, np.float32) if a.dtype.kind == "f" else
               np.ascontiguousarray(a) for n, a in weights["state"].items()},
              str(out / "model.safetensors"), metadata={"format": "pt", "dirjax": WEIGHTS_MARK})
    back = load_tokenizer(out, default_class=TOKENIZER_CLASS.get(weights["family"]))
    if tokenizer_fingerprint(back) != tok_fp:
        raise ConfigError(f"the tokenizer files written to {out.name}/ do not load back as the "
                          "model's tokenizer: cannot make this save portable")


# ----------------------------------------------------------------------------- export

def _is_export(directory: Path) -> bool:
    try:
        with safe_open(str(directory / "model.safetensors"), "np") as f:
            return (f.metadata() or {}).get("dirjax") is not None
    except Exception:  # no file, not safetensors: not ours
        return False


def _source_checkpoint(source: str):
    """(config dict, {HF name: fp32 array}, tokenizer-writer) of a source reference."""
    path = resolve_source(source)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"cannot export from {path}: expected a .gguf file or a "
                              "checkpoint folder")
        config, state = read_gguf(path)

        def write_tokenizer(out: Path):
            tok = gguf_tokenizer(path)
            save_export_tokenizer(tok, out)     # loads under transformers 4.57 and 5.x alike
            for name, key in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                              ("pad_token_id", "pad_token")):
                token = getattr(tok, key, None)
                config.setdefault(name, tok.convert_tokens_to_ids(token) if token else None)
        return config, state, write_tokenizer
    config, state = read_config(path), read_safetensors(path)

    def copy_tokenizer(out: Path):
        tok = source_tokenizer(path, config)   # the source's, as dirjax loads it (5.x)
        if tok is not None:                    # rewritten: loads under 4.57 and 5.x alike
            save_export_tokenizer(tok, out)
        if (path / "generation_config.json").is_file():
            shutil.copyfile(path / "generation_config.json", out / "generation_config.json")
    return config, state, copy_tokenizer


def export_hf(model, directory, *, source=None) -> Path:
    """Write the compressed `model` as a Hugging Face checkpoint folder: config.json, the
    tokenizer files, model.safetensors (fp32) with `model.embedding.table()` in place of the
    source's token embedding. A tied model whose head kept the original table
    (output="original") is untied: lm_head gets the original table, tie_word_embeddings false.
    Llama-family, GPT-2 and Gemma 3 sources (a GGUF source gets a config.json built from its
    metadata). The model's other weights must be its source's (checked)."""
    if getattr(model, "objective", "causal") != "causal":
        raise ConfigError(f"export_hf writes causal LMs (Llama-family, GPT-2, Gemma 3), "
                          f"not {type(model).__name__}")
    emb = model.embedding
    where = _source_of(model, source)
    output = output_of(model)
    directory = _target(directory, _is_export, "a checkpoint written by dirjax.export_hf")
    config, state, write_tokenizer = _checkpoint(where["source"])
    family = family_of(config, where["source"])
    module = family_module(family)   # its Hugging Face names, and the loader to check with
    head_names = module.HEADS
    embed, head = _hf_names(module, state, where["source"])
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    tied = text.get("tie_word_embeddings", family != "llama") or head is None

    # the model in hand must be the source's, with this embedding: build that and compare
    dtype = where.get("dtype") if "dtype" in where else _model_dtype(model)
    _check_source(model, emb, output, module, config, state, dtype, where["source"],
                  "export_hf writes")

    original = state[embed]
    state[embed] = np.asarray(emb.table(), np.float32)
    if tied:
        for n in head_names:
            state.pop(n, None)    # a tied checkpoint may carry a copy of the table as lm_head
        if output == "original":  # the head keeps the original table: untie
            state[head_names[0]] = original
            text["tie_word_embeddings"] = False
            config["tie_word_embeddings"] = False
        else:
            text["tie_word_embeddings"] = True
            config["tie_word_embeddings"] = True
    config.pop("torch_dtype", None)
    config["dtype"] = "float32"
    mark = {"format": "pt", "dirjax": EXPORT_MARK, "source": where["source"], "output": output,
            "method": getattr(emb, "method", "") or "", "rate": f"{compression_rate(emb):.6g}"}

    with _written(directory) as tmp:
        write_tokenizer(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({n: np.ascontiguousarray(a, np.float32) if a.dtype.kind == "f" else
                   np.ascontiguousarray(a) for n, a in state.items()},
                  str(tmp / "model.safetensors"), metadata=mark)
    return directory
