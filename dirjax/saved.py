"""A compressed model as one folder (`save_model`, read back by `load_model`), and its export
to an ordinary Hugging Face checkpoint (`export_hf`).

    save_model(model, DIR)            DIR/dirjax_model.json   the source reference (alias, local
                                                              path, .gguf or Hub id: never a
                                                              copy of its weights), dtype,
                                                              output, method, rate, metrics and
                                                              a fingerprint of the weights the
                                                              source must give back
                                      DIR/embedding/          the compressed embedding in its
                                                              packed saved form (compress/store.py)
    load_model(DIR)                   loads the source, swaps the saved embedding in (nothing is
                                      recompressed; the source's own table is not needed) and
                                      checks the fingerprint: the same model, the same logits
    export_hf(model, DIR)             DIR/config.json, tokenizer files, model.safetensors: the
                                      source's weights with the reconstructed table
                                      (`embedding.table()`, fp32) in place of the original;
                                      transformers loads it as an ordinary model

A model remembers where it came from: `load_model` records its source, dtype and tokenizer
override (`origin(model)`, a JSON string attribute that `swap_embedding` keeps).
Both writers write into a temporary sibling folder and rename it into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from dirjax.errors import ConfigError, DirjaxError, WeightsError
from dirjax.fileio import atomic_dir

MODEL_FILE = "dirjax_model.json"
FORMAT = "dirjax.model/1"
EMBEDDING_DIR = "embedding"
EXPORT_MARK = "dirjax.export/1"     # in model.safetensors' metadata: a folder export_hf wrote
OUTPUTS = ("tied", "original")
# files copied from a Hugging Face source into an export (the tokenizer and generation defaults)
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
          "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "added_tokens.json",
          "generation_config.json", "chat_template.jinja")


# ----------------------------------------------------------------------------- origin

def remember_origin(model, source, dtype=None, tokenizer=None) -> None:
    """Record on `model` where it was loaded from: `source` (an alias or Hub id as given, a
    local path made absolute), the dtype asked for (None: the loader's fp32) and the
    tokenizer override."""
    def ref(x):
        if x is None:
            return None
        from dirjax.models import ALIASES
        x = str(x)
        return x if x in ALIASES or not os.path.exists(x) else str(Path(x).resolve())
    model.origin = json.dumps({"source": ref(source), "dtype": _dtype_name(dtype),
                               "tokenizer": ref(tokenizer)}, sort_keys=True)


def origin(model) -> dict:
    """{"source", "dtype", "tokenizer"} recorded by `load_model`; {} for a model built otherwise."""
    return json.loads(getattr(model, "origin", None) or "{}")


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    import jax.numpy as jnp
    return jnp.dtype(dtype).name


def _model_dtype(model) -> str | None:
    """The dtype of the model's first floating parameter outside the embedding (None: fp32)."""
    import jax.numpy as jnp
    from flax import nnx
    _, state = nnx.split(model)
    for path, leaf in nnx.to_flat_state(state):
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        if path[0] != "embedding" and jnp.issubdtype(getattr(value, "dtype", np.int32), jnp.floating):
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
    from flax import nnx

    from dirjax.compress.cache import digest
    _, state = nnx.split(model)
    h = hashlib.blake2b(digest_size=20)
    for path, leaf in nnx.to_flat_state(state):
        if path[0] == "embedding":
            continue
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        h.update(".".join(map(str, path)).encode())
        h.update(digest(value).encode() if hasattr(value, "shape") else repr(value).encode())
    return h.hexdigest()


def _compressed(model):
    emb = model.embedding
    if not hasattr(emb, "export"):
        raise ConfigError(f"the model's embedding is a {type(emb).__name__}, not a compressed one "
                          "(dirjax.compress.compress + dirjax.swap_embedding make one)")
    return emb


def _source_of(model, source) -> dict:
    got = origin(model)
    if source is not None:
        got = {**got, "source": str(source)}
        if os.path.exists(str(source)):
            got["source"] = str(Path(source).resolve())
    if not got.get("source"):
        raise ConfigError("the model does not know its source (it was not made by "
                          "dirjax.load_model): pass source= (an alias, a local checkpoint "
                          "directory, a .gguf file or a Hub id)")
    return got


# ----------------------------------------------------------------------------- save / load

def is_saved_model(path) -> bool:
    try:
        return (Path(path) / MODEL_FILE).is_file()
    except (TypeError, OSError):
        return False


def save_model(model, directory, *, source=None, meta: dict | None = None) -> Path:
    """Write the compressed `model` (from `swap_embedding`) to the folder `directory`.

    Holds the model's source reference (`source`, default: where `load_model` found it), its
    dtype, the output choice (tied / original head, read off the model), the compressed
    embedding packed as its rate promises (`dirjax.compress.store`), and metadata: method,
    rate, metrics, `meta`. `dirjax.load_model(directory)` gives the same model back. An
    existing folder is replaced only when it is a saved model itself.
    """
    from dirjax.compress.store import save_compressed
    from dirjax.embedding import compression_rate
    emb = _compressed(model)
    where = _source_of(model, source)
    info = {
        "format": FORMAT, "source": where["source"],
        "dtype": where.get("dtype") if "dtype" in where else _model_dtype(model),
        "tokenizer": where.get("tokenizer"), "family": type(model).__name__,
        "output": output_of(model), "method": getattr(emb, "method", ""),
        "rate": compression_rate(emb), "storage_bytes": int(emb.storage_bytes()),
        "vocab_size": emb.vocab_size, "features": emb.features,
        "metrics": getattr(emb, "metrics", {}), "fingerprint": fingerprint(model),
        "meta": dict(meta or {}),
    }
    json.dumps(info)  # a non-JSON meta field fails before anything is written
    directory = _target(directory, is_saved_model, "a model saved by dirjax.save_model")
    with atomic_dir(directory) as tmp:
        save_compressed(emb, tmp / EMBEDDING_DIR)
        (tmp / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def _target(directory, ours, what: str) -> Path:
    """`directory` made absolute, its parent created; an existing non-empty folder that is not
    `ours` is refused (replacing it would delete someone's files)."""
    directory = Path(directory).absolute()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file, not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not ours(directory):
        raise ConfigError(f"{directory} exists and is not {what}: refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    return directory


def read_info(directory) -> dict:
    """The saved model's `dirjax_model.json`; WeightsError (one line) when it is not one."""
    directory = Path(directory)
    file = directory / MODEL_FILE
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{directory} is not a model saved by dirjax.save_model "
                           f"(no {MODEL_FILE})") from None
    except (OSError, ValueError) as e:   # ValueError: bad JSON or bytes that are not UTF-8
        raise WeightsError(f"{file} is damaged: {str(e).splitlines()[0]}") from None
    missing = [k for k in ("source", "output", "fingerprint") if not isinstance(info, dict)
               or k not in info]
    if not isinstance(info, dict) or info.get("format") != FORMAT or missing:
        raise WeightsError(f"{file}: not a saved model of format {FORMAT} "
                           f"({'missing ' + ', '.join(missing) if missing else 'format ' + repr(info.get('format'))})")
    if info["output"] not in OUTPUTS:
        raise WeightsError(f"{file}: output {info['output']!r} is not one of {OUTPUTS}")
    return info


def load_saved_model(directory, dtype=None, tokenizer=None):
    """(model, tokenizer) of a folder written by `save_model` (what `load_model(directory)`
    returns): the source loaded as saved (its dtype unless `dtype`), the saved embedding
    swapped in; WeightsError when the folder is damaged or the source now gives other weights."""
    from dirjax.compress.store import load_compressed
    from dirjax.embedding import swap_embedding
    from dirjax.models import load_model
    directory = Path(directory)
    info = read_info(directory)
    emb = load_compressed(directory / EMBEDDING_DIR)
    if (emb.vocab_size, emb.features) != (info.get("vocab_size"), info.get("features")):
        raise WeightsError(f"{directory}: the embedding is {emb.vocab_size}x{emb.features}, "
                           f"{MODEL_FILE} says {info.get('vocab_size')}x{info.get('features')}")
    want = _dtype_name(dtype) if dtype is not None else info.get("dtype")
    try:
        model, tok = load_model(info["source"], dtype=want,
                                tokenizer=tokenizer or info.get("tokenizer"))
    except DirjaxError as e:
        raise type(e)(f"saved model {directory}: its source: {e}") from None
    try:
        model = swap_embedding(model, emb, info["output"])
    except DirjaxError as e:
        raise WeightsError(f"saved model {directory}: {e}") from None
    if want == info.get("dtype") and fingerprint(model) != info["fingerprint"]:
        raise WeightsError(f"saved model {directory}: its source {info['source']} now gives other "
                           "weights than when it was saved (a changed checkpoint?)")
    return model, tok


# ----------------------------------------------------------------------------- export

def _is_export(directory: Path) -> bool:
    try:
        from safetensors import safe_open
        with safe_open(str(directory / "model.safetensors"), "np") as f:
            return (f.metadata() or {}).get("dirjax") is not None
    except Exception:  # no file, not safetensors: not ours
        return False


def _source_checkpoint(source: str):
    """(config dict, {HF name: fp32 array}, tokenizer-writer) of a source reference."""
    from dirjax.models import ALIASES, download, resolve_alias
    from dirjax.models.weights import read_safetensors
    if source in ALIASES:
        path = resolve_alias(source)
    elif os.path.exists(source):
        path = Path(source)
    else:
        path = download(source)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"cannot export from {path}: expected a .gguf file or a checkpoint folder")
        from dirjax.models.gguf import gguf_tokenizer, read_gguf
        config, state = read_gguf(path)

        def write_tokenizer(out: Path):
            tok = gguf_tokenizer(path)
            tok.save_pretrained(str(out))
            for name, key in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                              ("pad_token_id", "pad_token")):
                token = getattr(tok, key, None)
                config.setdefault(name, tok.convert_tokens_to_ids(token) if token else None)
        return config, state, write_tokenizer
    config = json.loads((path / "config.json").read_text())
    state = read_safetensors(path)

    def copy_tokenizer(out: Path):
        for name in COPIED:
            if (path / name).is_file():
                shutil.copyfile(path / name, out / name)
    return config, state, copy_tokenizer


# family -> (embedding tensor suffixes, head tensor names), Hugging Face names
NAMES = {
    "llama": (("model.embed_tokens.weight", "embed_tokens.weight"), ("lm_head.weight",)),
    "gemma3": (("model.embed_tokens.weight", "model.language_model.embed_tokens.weight",
                "language_model.model.embed_tokens.weight", "embed_tokens.weight"),
               ("lm_head.weight", "language_model.lm_head.weight")),
    "gpt2": (("transformer.wte.weight", "wte.weight"), ("lm_head.weight",)),
}


def _model_from_state(family: str, config: dict, state: dict, dtype):
    """Our model built from Hugging Face-named tensors (to check the export against `model`)."""
    import importlib

    from flax import nnx
    module = importlib.import_module(f"dirjax.models.{family}")
    if family == "gpt2":
        from dirjax.models.weights import build_filled
        c = module.GPT2Config.from_hf(config)
        return build_filled(lambda: module.GPT2(c, rngs=nnx.Rngs(0)),
                            lambda m: module.load_hf_state(m, state), dtype)
    cls = module.LlamaConfig if family == "llama" else module.Gemma3Config
    return module.from_state(cls.from_hf(config), state, dtype)


def export_hf(model, directory, *, source=None) -> Path:
    """Write the compressed `model` as a Hugging Face checkpoint folder: config.json, the
    tokenizer files, model.safetensors (fp32) with `model.embedding.table()` in place of the
    source's token embedding. A tied model whose head kept the original table
    (output="original") is untied: lm_head gets the original table, tie_word_embeddings false.
    Llama-family, GPT-2 and Gemma 3 sources (a GGUF source gets a config.json built from its
    metadata). The model's other weights must be its source's (checked)."""
    from safetensors.numpy import save_file

    from dirjax.embedding import compression_rate, swap_embedding
    from dirjax.models import family_of
    emb = model.embedding
    where = _source_of(model, source)
    output = output_of(model)
    config, state, write_tokenizer = _source_checkpoint(where["source"])
    family = family_of(config, where["source"])
    if family not in NAMES:
        raise ConfigError(f"export_hf writes causal LMs (Llama-family, GPT-2, Gemma 3), "
                          f"not {family}")
    embed_names, head_names = NAMES[family]
    embed = next((n for n in embed_names if n in state), None)
    if embed is None:
        raise WeightsError(f"{where['source']}: no token embedding tensor ({embed_names[0]})")
    head = next((n for n in head_names if n in state), None)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    tied = text.get("tie_word_embeddings", family != "llama") or head is None

    # the model in hand must be the source's, with this embedding: build that and compare
    dtype = where.get("dtype") if "dtype" in where else _model_dtype(model)
    check = swap_embedding(_model_from_state(family, config, state, dtype), emb, output)
    if fingerprint(check) != fingerprint(model):
        raise ConfigError(f"the model's weights other than its embedding differ from its source "
                          f"{where['source']} (export_hf writes the source's weights)")
    del check

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

    directory = _target(directory, _is_export, "a checkpoint written by dirjax.export_hf")
    with atomic_dir(directory) as tmp:
        write_tokenizer(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({n: np.ascontiguousarray(a, np.float32) if a.dtype.kind == "f" else
                   np.ascontiguousarray(a) for n, a in state.items()},
                  str(tmp / "model.safetensors"), metadata=mark)
    return directory
