"""Golden fixtures for `dirjax.export_hf`: a compressed tiny model exported by dirjax, loaded by
transformers-PyTorch (torch==2.13.0) as an ordinary model, its logits saved.

    .venv/bin/python scripts/fixtures_export.py   # after fixtures_llama.py, fixtures_gpt2_bert.py

Writes tests/fixtures/golden_export_{llama,gpt2,gemma3}.npz: the inputs (a right-padded batch), the
logits of the export under transformers, and how the model was compressed (method, rate,
output), which tests/test_export.py redoes without torch (deterministic: fixed seeds, the
tiny fixtures) and compares within 1e-4.
  llama  tiny-llama (tied), `quant` at rate 10, output="original": the export unties,
         lm_head keeps the original table (LlamaForCausalLM)
  gpt2   tiny-gpt2 (tied), `svd` at rate 10, output="tied" (GPT2LMHeadModel)
  gemma3 tiny-gemma3 (tied), `quant` at rate 8, output="tied" (Gemma3ForCausalLM)
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python evaluates expressions from left to right, and then some more words follow.",
    "A class definition is an executable statement.",
    "Hello",
]
CASES = {
    "llama": {"fixture": "tiny-llama", "method": "quant", "rate": 10.0, "output": "original",
              "cls": "LlamaForCausalLM"},
    "gpt2": {"fixture": "tiny-gpt2", "method": "svd", "rate": 10.0, "output": "tied",
             "cls": "GPT2LMHeadModel"},
    "gemma3": {"fixture": "tiny-gemma3", "method": "quant", "rate": 8.0, "output": "tied",
               "cls": "Gemma3ForCausalLM"},
}


def compressed(case: dict):
    """(compressed dirjax model, tokenizer): the fixture, compressed as the case says."""
    import dirjax
    from dirjax.compress import compress
    model, tok = dirjax.load_model(FIXTURES / case["fixture"])
    emb = compress(model.embedding.table(), rate=case["rate"], method=case["method"])
    return dirjax.swap_embedding(model, emb, case["output"]), tok


def main():
    assert torch.__version__.startswith("2.13.0"), torch.__version__
    torch.set_num_threads(1)
    import dirjax
    for name, case in CASES.items():
        model, tok = compressed(case)
        enc = tok(TEXTS, padding=True, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
        with tempfile.TemporaryDirectory() as tmp:
            out = dirjax.export_hf(model, Path(tmp) / "export")
            config = json.loads((out / "config.json").read_text())
            hf = getattr(transformers, case["cls"]).from_pretrained(out, dtype=torch.float32).eval()
            assert type(hf).__name__ == case["cls"], type(hf)
            with torch.no_grad():
                got = hf(torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long),
                         position_ids=torch.arange(ids.shape[1])[None]).logits.float().numpy()
            head = hf.get_output_embeddings().weight.detach().numpy()
            table = hf.get_input_embeddings().weight.detach().numpy()
        np.testing.assert_array_equal(table, np.asarray(model.embedding.table()))
        if case["output"] == "original":   # untied: the head is the original table
            assert config["tie_word_embeddings"] is False
            assert not np.array_equal(head, table)
        mine = np.asarray(model(ids, mask))
        real = mask > 0
        print(f"  {name}: {case['cls']} from the export, max |dirjax - transformers| over real "
              f"positions {np.abs(mine - got)[real].max():.2e}")
        np.testing.assert_allclose(mine[real], got[real], atol=1e-4, rtol=0)
        path = FIXTURES / f"golden_export_{name}.npz"
        np.savez_compressed(path, ids=ids, mask=mask, logits=got.astype(np.float32),
                            texts=np.array(TEXTS), fixture=case["fixture"], method=case["method"],
                            rate=case["rate"], output=case["output"], cls=case["cls"])
        assert path.stat().st_size < 1_000_000, path
        print(f"  {path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
