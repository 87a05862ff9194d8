"""Golden fixtures for the Llama model and GGUF loading, from transformers-PyTorch (torch==2.13.0).

    .venv/bin/python scripts/fixtures_llama.py      # needs torch, transformers, accelerate

Writes (deterministic: fixed seeds, fixed texts):
  tests/fixtures/tiny-llama/          random LlamaForCausalLM (vocab 1000, 2 layers, d 64, 4 heads,
                                      2 KV heads, tied head) + a byte-level BPE tokenizer trained
                                      on pydoc_data.topics; `load_model` returns a working pair
  tests/fixtures/tiny-llama/untied/   a variant with its own lm_head, 1 KV head, head_dim 32
                                      (q_proj 64 -> 128), Llama 3 RoPE scaling, stored in bf16
  tests/fixtures/golden_llama.npz     logits of a right-padded batch for both
  tests/fixtures/golden_smollm2.npz   SmolLM2-135M (offline package, GGUF) as loaded by
                                      transformers: logits at a few positions of a fixed prompt,
                                      greedy continuation of "The capital of France is", the
                                      token ids of a few texts

The tests compare dirjax against these files and need no torch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
VOCAB = 1000
EOT = "<|endoftext|>"

# a right-padded batch: sentences of different lengths
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python evaluates expressions from left to right, and then some more words follow.",
    "A class definition is an executable statement.",
    "Hello",
]
# SmolLM2: a prompt whose logits are compared, the greedy prompt, texts whose ids are compared
SMOL_PROMPT = ("The Python interpreter reads a program as a sequence of statements; each "
               "statement is executed in turn, and the values it computes are bound to names.")
SMOL_POSITIONS = 4  # logits kept at this many positions (the last one included): < 1 MB
FRANCE = "The capital of France is"
SMOL_TEXTS = [
    FRANCE,
    "  Leading spaces, tabs\tand\nnewlines; numbers 1234567 and 3.14159!",
    "Unicode: café, naïve, Straße, 東京, emoji 🙂 — dashes…",
    "def f(x):\n    return x ** 2  # square",
]


def corpus() -> list[str]:
    """English prose that every Python install has: the pydoc topic help texts."""
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def tokenizer():
    """Byte-level BPE of VOCAB tokens, `<|endoftext|>` as bos/eos/unk/pad (SmolLM2-style)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT,
        padding_side="right", model_max_length=256)


def batch(tok, texts) -> dict[str, np.ndarray]:
    enc = tok(texts, padding=True, return_tensors="np")
    assert tok.padding_side == "right"
    return {"ids": enc["input_ids"].astype(np.int32),
            "mask": enc["attention_mask"].astype(np.int32)}


def save(model, tok, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    for f in directory.iterdir():
        if f.is_file():
            f.unlink()
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        assert f.stat().st_size < 1_000_000, f
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1024:.0f} KiB")


def random_llama(tok, seed: int, **overrides):
    """A random LlamaForCausalLM whose attention is far from uniform and whose norms are not 1,
    so a wrong RoPE, mask or norm shows in the logits."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{
        "vocab_size": len(tok), "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "initializer_range": 0.25,
        "tie_word_embeddings": True, "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **overrides})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def logits(model, b) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(b["ids"], dtype=torch.long),
                    attention_mask=torch.tensor(b["mask"], dtype=torch.long),
                    position_ids=torch.arange(b["ids"].shape[1])[None])
    return out.logits.float().numpy()


def tiny_llamas() -> dict[str, np.ndarray]:
    tok = tokenizer()
    assert len(tok) <= 1024, len(tok)
    b = batch(tok, TEXTS)
    tied = random_llama(tok, seed=0)
    save(tied, tok, FIXTURES / "tiny-llama")
    untied = random_llama(
        tok, seed=1, tie_word_embeddings=False, num_key_value_heads=1, head_dim=32,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})
    # stored in bf16 (as many Hub Llama checkpoints are); the reference runs the same
    # bf16-rounded weights in fp32. (Not model.to(bf16).float(): that would also round the
    # RoPE frequency buffer.)
    with torch.no_grad():
        for p in untied.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    golden = {"ids": b["ids"], "mask": b["mask"],
              "tied_logits": logits(tied, b), "untied_logits": logits(untied, b)}
    save(untied.to(torch.bfloat16), tok, FIXTURES / "tiny-llama" / "untied")
    return golden


def smollm2() -> dict[str, np.ndarray]:
    """SmolLM2-135M GGUF as transformers-PyTorch loads it (dequantised to fp32)."""
    sys.path.insert(0, str(ROOT))
    from dirjax.models import resolve_alias
    path = resolve_alias("smollm2-135m")
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = tok(SMOL_PROMPT, return_tensors="pt")["input_ids"]
    T = ids.shape[1]
    positions = np.linspace(0, T - 1, SMOL_POSITIONS).round().astype(np.int32)
    with torch.no_grad():
        full = model(ids).logits[0].numpy()
    france = tok(FRANCE, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**france, max_new_tokens=8, do_sample=False)
        cont = generated[0, france["input_ids"].shape[1]:]
    print(f"  SmolLM2 greedy: {FRANCE!r} -> {tok.decode(cont)!r}")
    out = {"prompt_ids": ids[0].numpy().astype(np.int32), "positions": positions,
           "logits": full[positions].astype(np.float32),
           "france_ids": france["input_ids"][0].numpy().astype(np.int32),
           "france_continuation": cont.numpy().astype(np.int32)}
    for i, text in enumerate(SMOL_TEXTS):
        out[f"text_ids_{i}"] = np.array(tok(text)["input_ids"], np.int32)
    out["texts"] = np.array(SMOL_TEXTS)
    return out


def main():
    assert torch.__version__.startswith("2.13.0"), torch.__version__
    torch.set_num_threads(1)
    np.savez_compressed(FIXTURES / "golden_llama.npz", **tiny_llamas())
    np.savez_compressed(FIXTURES / "golden_smollm2.npz", **smollm2())
    for name in ("golden_llama.npz", "golden_smollm2.npz"):
        f = FIXTURES / name
        assert f.stat().st_size < 2_000_000, f
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
