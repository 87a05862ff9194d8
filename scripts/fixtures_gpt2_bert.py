"""Golden fixtures for the GPT-2 and BERT models, from transformers-PyTorch (torch==2.13.0, CPU).

    .venv/bin/python scripts/fixtures_gpt2_bert.py

Writes (deterministic: fixed seeds, fixed texts):
  tests/fixtures/tiny-gpt2/          random GPT2LMHeadModel (vocab 1000, 2 layers, d 64, 4 heads)
                                     + a byte-level BPE tokenizer trained on pydoc_data.topics
  tests/fixtures/tiny-bert/          random BertForMaskedLM of the same size + a WordPiece tokenizer
  tests/fixtures/golden_gpt2.npz     GPT-2 logits of a right-padded batch
  tests/fixtures/golden_bert.npz     BERT MLM logits and last hidden states of a right-padded
                                     batch of sentence pairs
  tests/fixtures/golden_minilm.npz   all-MiniLM-L6-v2 (offline package) last hidden states,
                                     pooler output and mean-pooled sentence embeddings

The tests compare dirjax against these files and need no torch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
VOCAB = 1000
# init std 0.1 rather than HF's 0.02, so logits are O(1) and a 1e-4 tolerance means something
TINY = dict(hidden=64, layers=2, heads=4, inner=256, positions=128, init=0.1)

# a right-padded batch: sentences of different lengths
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python evaluates expressions from left to right.",
    "A class definition is an executable statement.",
    "Hello",
]
MINILM_TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an instrument on stage.",
    "The stock market fell sharply today.",
    "Embeddings map tokens to vectors.",
]


def corpus() -> list[str]:
    """English prose that every Python install has: the pydoc topic help texts."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def gpt2_tokenizer():
    """Byte-level BPE of VOCAB tokens, `<|endoftext|>` as bos/eos/unk and (for batching) pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    eot = "<|endoftext|>"
    return transformers.GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot,
        model_max_length=TINY["positions"])


def bert_tokenizer():
    """Uncased WordPiece of VOCAB tokens with BERT's special tokens ([PAD] = 0)."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=special,
                                        show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    # the trainer numbers the alphabet in hash order (differs run to run); WordPiece only
    # needs the token set, so renumber it in a fixed order: specials, then by (length, text)
    learned = sorted(set(tok.get_vocab()) - set(special), key=lambda w: (len(w), w))
    tok.model = models.WordPiece({w: i for i, w in enumerate(special + learned)}, unk_token="[UNK]")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return transformers.BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True,
        model_max_length=TINY["positions"])


def batch(tokenizer, texts, pairs=None):
    """Right-padded int32 ids, attention mask and token-type ids as numpy arrays."""
    enc = tokenizer(texts, pairs, padding=True, return_tensors="np")
    assert tokenizer.padding_side == "right"
    out = {"ids": enc["input_ids"].astype(np.int32),
           "mask": enc["attention_mask"].astype(np.int32)}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"].astype(np.int32)
    return out


def save(model, tokenizer, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    for f in directory.iterdir():
        f.unlink()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    for f in sorted(directory.iterdir()):
        assert f.stat().st_size < 1_000_000, f
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1024:.0f} KiB")


def tiny_gpt2() -> dict[str, np.ndarray]:
    """Save tiny-gpt2/; return its golden logits of TEXTS."""
    tok = gpt2_tokenizer()
    assert len(tok) <= 1024, len(tok)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=TINY["positions"], n_embd=TINY["hidden"],
        n_layer=TINY["layers"], n_head=TINY["heads"], n_inner=TINY["inner"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        initializer_range=TINY["init"])
    model = transformers.GPT2LMHeadModel(config).eval()
    # random init leaves LayerNorms at (1, 0) and biases at 0: perturb them so the
    # parity tests see every parameter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    save(model, tok, FIXTURES / "tiny-gpt2")
    b = batch(tok, TEXTS)
    with torch.no_grad():
        out = model(torch.tensor(b["ids"], dtype=torch.long),
                    attention_mask=torch.tensor(b["mask"], dtype=torch.long),
                    position_ids=torch.arange(b["ids"].shape[1])[None])
    return {"texts": np.array(TEXTS), "ids": b["ids"], "mask": b["mask"],
            "logits": out.logits.numpy()}


def tiny_bert() -> dict[str, np.ndarray]:
    """Save tiny-bert/; return its golden MLM logits and hidden states of TEXTS paired."""
    tok = bert_tokenizer()
    assert len(tok) <= 1024, len(tok)
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"], intermediate_size=TINY["inner"],
        max_position_embeddings=TINY["positions"], pad_token_id=tok.pad_token_id,
        initializer_range=TINY["init"])
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    save(model, tok, FIXTURES / "tiny-bert")
    # sentence pairs, so token-type embeddings matter too
    pairs = ["It is short."] * len(TEXTS)
    b = batch(tok, TEXTS, pairs)
    with torch.no_grad():
        out = model(torch.tensor(b["ids"], dtype=torch.long),
                    attention_mask=torch.tensor(b["mask"], dtype=torch.long),
                    token_type_ids=torch.tensor(b["token_type_ids"], dtype=torch.long),
                    output_hidden_states=True)
    return {"texts": np.array(TEXTS), "pairs": np.array(pairs), "ids": b["ids"], "mask": b["mask"],
            "token_type_ids": b["token_type_ids"], "logits": out.logits.numpy(),
            "hidden": out.hidden_states[-1].numpy()}


def minilm() -> dict[str, np.ndarray]:
    """all-MiniLM-L6-v2 from the offline package: BertModel, mean pooling
    (sentence-transformers)."""
    sys.path.insert(0, str(ROOT))
    from dirjax.models import resolve_alias
    path = resolve_alias("minilm-l6")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(path).eval()
    b = batch(tok, MINILM_TEXTS)
    with torch.no_grad():
        out = model(torch.tensor(b["ids"], dtype=torch.long),
                    attention_mask=torch.tensor(b["mask"], dtype=torch.long),
                    token_type_ids=torch.tensor(b["token_type_ids"], dtype=torch.long))
    h = out.last_hidden_state
    m = torch.tensor(b["mask"], dtype=h.dtype)[..., None]
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return {"texts": np.array(MINILM_TEXTS), "ids": b["ids"], "mask": b["mask"],
            "token_type_ids": b["token_type_ids"], "hidden": h.numpy(),
            "pooler": out.pooler_output.numpy(), "mean_pooled": mean.numpy()}


def main():
    assert torch.__version__.startswith("2.13.0"), torch.__version__
    torch.set_num_threads(1)
    goldens = {"golden_gpt2.npz": tiny_gpt2(), "golden_bert.npz": tiny_bert(),
               "golden_minilm.npz": minilm()}
    for name, arrays in goldens.items():
        np.savez_compressed(FIXTURES / name, **arrays)
        f = FIXTURES / name
        assert f.stat().st_size < 1_000_000, f
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
