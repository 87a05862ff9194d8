"""The tokenizer files of an export (`dirjax.export_hf`), written so that transformers 4.57 and
5.x both load them with `AutoTokenizer` and give the same ids: those of the tokenizer dirjax
itself evaluates the source with (the source's own, loaded under 5.x).

    save_export_tokenizer(tok, DIR)   DIR/tokenizer.json          the backend as `tok` runs it:
                                                                  vocabulary, normalizer, pre-
                                                                  tokenizer and the post-processor
                                                                  that adds BOS / EOS (or not)
                                      DIR/tokenizer_config.json   tokenizer_class
                                                                  PreTrainedTokenizerFast, the
                                                                  special tokens, right padding
                                      DIR/chat_template.jinja     when `tok` has one

Why both versions agree: `PreTrainedTokenizerFast` is a class both know (5.x: an alias of
`TokenizersBackend`, which 4.57 lacks), and both build it from tokenizer.json as written, so the
special-token behaviour lives in one place, tokenizer.json's post-processor. The fields one
version would use to rebuild or alter that pipeline are made to agree with it or left out:
  add_bos_token / add_eos_token   left out: 5.x replaces the post-processor with its own template
                                  when either is present, 4.57's generic class ignores them
  add_prefix_space                set to the pre-tokenizer's own value: 4.57 rewrites the
                                  pre-tokenizer to the config's value (default False)
  extra_special_tokens            5.x writes a list, which 4.57 cannot read (it expects named
                                  tokens): written as additional_special_tokens, read by both
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from dirjax.models import family_of
from dirjax.models.weights import TOKENIZER_FILES, load_tokenizer

COMPAT_CLASS = "PreTrainedTokenizerFast"
# tokenizer classes transformers 4.x does not have
V5_ONLY_CLASSES = frozenset({"TokenizersBackend", "SentencePieceBackend", "PythonBackend",
                             "TikTokenBackend", "MistralCommonBackend"})
# load-time arguments 5.x records in the config, no property of the tokenizer
DROPPED = ("add_bos_token", "add_eos_token", "is_local", "local_files_only")


def save_export_tokenizer(tok, directory: str | os.PathLike) -> Path:
    """Save the fast tokenizer `tok` (transformers 5.x) into `directory` as described above."""
    directory = Path(directory)
    tok.save_pretrained(str(directory))
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    for key in DROPPED:
        config.pop(key, None)
    config["tokenizer_class"] = COMPAT_CLASS
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, dict) and extra:     # named extra tokens: both versions read the dict
        config["extra_special_tokens"] = extra
    elif extra:
        config["additional_special_tokens"] = [str(t) for t in extra]
    prefix = _pre_tokenizer_prefix_space(tok)
    if prefix is None:
        config.pop("add_prefix_space", None)
    else:
        config["add_prefix_space"] = prefix
    config["padding_side"] = tok.padding_side
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return directory


def _pre_tokenizer_prefix_space(tok) -> bool | None:
    """The add_prefix_space of the backend's top-level pre-tokenizer, None where it has none
    (no pre-tokenizer, a Sequence, a Metaspace with prepend_scheme): the value 4.57 compares
    the config's add_prefix_space with."""
    pre = tok.backend_tokenizer.pre_tokenizer
    if pre is None:
        return None
    try:
        state = json.loads(pre.__getstate__())
    except (TypeError, ValueError):
        return None
    value = state.get("add_prefix_space") if isinstance(state, dict) else None
    return value if isinstance(value, bool) else None


def source_tokenizer(path: Path, config: dict):
    """The tokenizer dirjax loads with the checkpoint folder `path` (its config.json `config`):
    the same class choice as the family's `from_hf_dir`; None for a folder without tokenizer
    files (a model loaded with a tokenizer named apart)."""
    if not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        return None
    default = "GPT2Tokenizer" if family_of(config, str(path)) == "gpt2" else None
    return load_tokenizer(path, default_class=default)
