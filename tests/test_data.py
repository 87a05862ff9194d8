"""Data: the Hub's WikiText rows join to the shared file's exact text; local files; clear errors."""
import os
import sys
from pathlib import Path

import pytest

from dirjax import data
from dirjax.errors import ConfigError, DataError, MissingPackageError

SHARED = Path(os.environ.get("DIRJAX_DATA_DIR") or
              Path(__file__).resolve().parents[1].parent / "shared" / "data")


def parse_joined(text):
    """Inverse of "\\n\\n".join for rows that are "" or one line ending in "\\n"."""
    rows, p = [], 0
    while p < len(text):
        if text.startswith("\n\n", p):
            rows.append("")
            p += 2
        else:
            end = text.index("\n", p) + 1
            rows.append(text[p:end])
            p = end + 2
    if p == len(text):          # a separator ended the text: one last empty row
        rows.append("")
    return rows


def test_shared_wikitext_raw_is_the_hub_rows_joined_with_blank_lines():
    raw = (SHARED / "wikitext-2-raw" / "test.txt").read_text(encoding="utf-8")
    rows = parse_joined(raw)
    # the Hub's test split: 4,358 rows, each "" or exactly one line ending in "\n"
    assert len(rows) == 4358
    assert all(r == "" or (r.endswith("\n") and r.count("\n") == 1 and r.strip()) for r in rows)
    assert data.join_wikitext(rows) == raw
    # same blank/non-blank pattern, row by row, as the tokenised file's one-row-per-line layout
    tokenised = (SHARED / "wikitext-2" / "test.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert [bool(r) for r in rows] == [bool(t.strip()) for t in tokenised]
    # and the first rows are the ones the Hub lists first
    assert rows[:3] == ["", " = Robert Boulter = \n", ""]
    assert raw.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")


def test_load_text_reads_local_files():
    raw = data.load_text("wikitext-2-raw", "test", SHARED)
    assert len(raw) > 1_000_000 and raw.startswith("\n\n = Robert Boulter =")
    tok = data.load_text("wikitext-2", "valid", SHARED)
    assert tok.startswith("\n\n = Homarus gammarus = \n\n\n\n\n Homarus gammarus , known")
    assert "\n\n\n\n\n" in tok and " \n" not in tok.replace(" \n\n", "")


def test_data_dir_from_environment(monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(SHARED))
    assert data.load_text("wikitext-2-raw", "test") == data.load_text(
        "wikitext-2-raw", "test", SHARED)


def test_missing_files_and_dirs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="missing data file"):
        data.load_text("wikitext-2-raw", "test", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.load_text("wikitext-2-raw", "test", tmp_path / "nope")
    with pytest.raises(DataError, match="no local 'validation' split"):
        data.load_text("wikitext-2-raw", "validation", SHARED)
    with pytest.raises(ConfigError):
        data.load_text("wikitext-103", "test", SHARED)


def test_hub_without_datasets_package_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)      # import fails as if not installed
    with pytest.raises(MissingPackageError, match="datasets"):
        data.load_text("wikitext-2-raw", "test")
    with pytest.raises(MissingPackageError, match="datasets"):
        data.load_sts("stsb", "validation")


def test_stdlib_splits_are_disjoint_and_fixed():
    held, train = data.stdlib_text("heldout"), data.stdlib_text("train")
    assert len(held) > 50_000 and len(train) > 3 * len(held)
    from pydoc_data.topics import topics
    keys = sorted(topics)
    everything = "\n\n".join(topics[k].strip() for k in keys)
    assert len(held) + len(train) + 2 == len(everything)       # a partition of the topics
    assert all(topics[k].strip() in held for k in keys[3::4])   # every fourth topic held out
    assert topics[keys[0]].strip() in train and topics[keys[0]].strip() not in held
    assert data.stdlib_text("heldout") == held
    assert data.load_text("stdlib", "heldout") == held
    with pytest.raises(ConfigError):
        data.load_text("stdlib", "test")


def test_sts_local_tsv(tmp_path):
    pairs = data.load_sts("stsb", "dev", SHARED)
    assert len(pairs) == 1500
    assert pairs.sentence1[0] == "A man with a hard hat is dancing."
    assert pairs.sentence2[0] == "A man wearing a hard hat is dancing."
    assert pairs.score[:2] == [5.0, 4.75]
    bad = tmp_path / "glue" / "STS-B"
    bad.mkdir(parents=True)
    (bad / "dev.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match="header"):
        data.load_sts("stsb", "validation", tmp_path)


def test_text_lines_drop_blank_lines():
    assert data.text_lines("\n\n = A = \n\n\n\n b c \n\n") == ["= A =", "b c"]
