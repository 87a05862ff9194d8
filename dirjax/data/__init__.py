"""Every dataset dirjax reads, in one place: evaluation texts (WikiText-2, stdlib prose), STS-B
pairs, GLUE and SQuAD v1.1. Each comes from a local data folder (the `data_dir` argument or
config field, else $DIRJAX_DATA_DIR) or, without one, from the Hugging Face Hub by name."""
from dirjax.data import glue, squad
from dirjax.data.common import ENV_DATA_DIR, hub_dataset, resolve_data_dir
from dirjax.data.sts import STS, SentencePairs, load_sts, read_sts_tsv
from dirjax.data.text import (
    SPLIT_ALIASES,
    STDLIB_HELDOUT_EVERY,
    TEXTS,
    join_wikitext,
    load_text,
    normalise_split,
    rows_from_lines,
    stdlib_text,
    text_lines,
)

DATASETS = ("stdlib", *TEXTS, *STS)

__all__ = ["ENV_DATA_DIR", "DATASETS", "STS", "SPLIT_ALIASES", "STDLIB_HELDOUT_EVERY", "TEXTS",
           "SentencePairs", "glue", "hub_dataset", "join_wikitext", "load_sts", "load_text",
           "normalise_split", "read_sts_tsv", "resolve_data_dir", "rows_from_lines", "squad",
           "stdlib_text", "text_lines"]
