"""Fixture for the tokenizer of `dirjax.export_hf` under transformers 4.x: the ids transformers
4.57 gives with the tokenizer of an export of each tiny model, which tests/test_export_tokenizer.py
compares with the ids of transformers 5.x (the export's tokenizer and the source's own).

Two steps, two environments (`make fixtures` runs both):

    .venv/bin/python scripts/fixtures_tokenizer_compat.py export /tmp/dirjax-tok-exports
    python3 -m venv /tmp/tf457 && /tmp/tf457/bin/pip install transformers==4.57.6 tokenizers \\
        numpy safetensors
    /tmp/tf457/bin/python scripts/fixtures_tokenizer_compat.py read /tmp/dirjax-tok-exports \\
        tests/fixtures/tokenizer_compat_457.json

`export` (dirjax, transformers 5.x) writes DIR/NAME for each of CASES: its source compressed
and exported by `export_hf`, the code path of the test suite (`export_case`). `read`
(transformers 4.x only: neither dirjax nor jax is imported) loads each folder's tokenizer with
AutoTokenizer and writes, for the fixed TEXTS, the ids of each text alone and of the padded
batch, with the transformers and tokenizers versions, to the JSON file (default: stdout). The
tests run `read` live too, against a 4.x python where one is at hand (a slow test).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE = FIXTURES / "tokenizer_compat_457.json"

# name -> (source, compression method, rate, output). "gguf-bos-eos": tiny-llama written as a
# llama.cpp GGUF (tests/test_gguf.py's writer) whose metadata asks for BOS and EOS: the one case
# whose tokenizer adds special tokens (the tiny fixtures' add none)
CASES = {
    "gpt2": ("tiny-gpt2", "svd", 10.0, "tied"),
    "llama": ("tiny-llama", "quant", 10.0, "original"),
    "gemma3": ("tiny-gemma3", "svd", 8.0, "tied"),
    "gguf-bos-eos": ("tiny-llama.gguf", "quant", 10.0, "tied"),
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A class definition is an executable statement; x = f(1, 2) ** 3 # 42",
    "Caf\u00e9 na\u00efve \u00fcber \u00bd \u2014 "
    "\u65e5\u672c\u8a9e\u306e\u6587 \U0001f600 \u0394x",
    "  two leading spaces, then\ttabs\t\tand\n\nnewlines   and trailing   ",
    "    \n\t ",
    "<|endoftext|>",
    "Hello<|endoftext|>world <|endoftext|> again",
    "<s> </s> <bos> <eos> <pad> <|im_start|>user<|im_end|>",
    "",
]


def export_case(name: str, directory):
    """(export folder, the source's tokenizer as dirjax loads it): the source of case `name`
    compressed and exported to `directory` as the tests do (transformers 5.x, dirjax). The GGUF
    case writes its source next to `directory` (DIRECTORY.gguf)."""
    import dirjax
    from dirjax.compress import compress

    fixture, method, rate, output = CASES[name]
    source = FIXTURES / fixture
    if fixture.endswith(".gguf"):
        source = write_gguf_with_bos_eos(Path(directory).with_suffix(".gguf"))
    model, tok = dirjax.load_model(source)
    emb = compress(model.embedding.table(), rate=rate, method=method)
    return dirjax.export_hf(dirjax.swap_embedding(model, emb, output), directory), tok


def write_gguf_with_bos_eos(path: Path) -> Path:
    """tests/test_gguf.py's tiny-llama GGUF, its add_bos_token / add_eos_token flags set true."""
    from unittest import mock

    import gguf
    sys.path.insert(0, str(ROOT / "tests"))
    from test_gguf import write_tiny_gguf

    def both(writer, _value):
        writer.add_bool("tokenizer.ggml.add_bos_token", True)
        writer.add_bool("tokenizer.ggml.add_eos_token", True)
    with mock.patch.object(gguf.GGUFWriter, "add_add_bos_token", both):
        return write_tiny_gguf(Path(path))


def encode(tok, texts=TEXTS) -> dict:
    """{"ids": ids of each text alone, "batch": the padded batch of all texts (right padding,
    as dirjax pads)}: plain lists, what both versions' tokenizers return."""
    tok.padding_side = "right"
    batch = tok(list(texts), padding=True)
    return {"ids": [list(tok(t)["input_ids"]) for t in texts],
            "batch": {"input_ids": [list(r) for r in batch["input_ids"]],
                      "attention_mask": [list(r) for r in batch["attention_mask"]]}}


def read(folders: dict[str, Path]) -> dict:
    """The fixture: what AutoTokenizer of this transformers gives for each export folder."""
    import tokenizers
    import transformers

    models = {}
    for name, folder in folders.items():
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
        models[name] = {"class": type(tok).__name__, "pad_token_id": tok.pad_token_id,
                        **encode(tok)}
    return {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "texts": TEXTS, "models": models}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("export", "read"):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1])
    if argv[0] == "export":
        import dirjax.errors  # noqa: F401  (fails here, not halfway, outside dirjax's venv)
        for name in CASES:
            print(f"  {name}: {export_case(name, root / name)[0]}")
        return 0
    result = read({name: root / name for name in CASES})
    text = json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    # one line per list of ids
    text = re.sub(r"\[[\d,\s]*\]", lambda m: re.sub(r"\s+", " ", m.group(0))
                  .replace("[ ", "[").replace(" ]", "]"), text)
    if len(argv) > 2:
        Path(argv[2]).write_text(text)
        print(f"wrote {argv[2]} (transformers {result['transformers']})")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
