"""Issue 14: Gemma 3 270M (262,144 x 640 table, tied head) on WikiText-2 raw test, every method.

    python run.py --config configs/gemma3_wikitext.py --config.data_dir=../shared/data

(workdir: runs/gemma3_wikitext; an interrupted run resumes when the same command is run again.)
Gemma 3 270M from the offline GGUF packages (alias gemma3-270m, Q4_K_M dequantised to fp32).
Causal perplexity on the first 16,384 tokens of WikiText-2 raw test, 32 non-overlapping windows
of 512, each with Gemma's BOS in front (bos "auto": the tokenizer adds one; the rows say bos
true); scored through the chunked vocabulary path (never [B, T, 262144] logits). The compressed
table serves the input and the tied output head (outputs "tied" only). Methods at rates 5, 10,
16 (stored bytes against the fp32 table): svd, the paper's AE (30 epochs, its defaults),
quant, quant_freq and quant_gptq. Calibration (token counts; 8,192 final hidden states for
quant_gptq) from WikiText-2 validation, disjoint from the test text.

Expected: (to be measured)
"""
from dirjax.config import base_config

CALIBRATION = {"dataset": "wikitext-2", "split": "validation", "n_hidden": 0}


def get_config():
    config = base_config()
    config.model = "gemma3-270m"
    config.task = "causal_ppl"
    config.dataset = "wikitext-2-raw"
    config.split = "test"
    config.max_tokens = 16384
    config.max_length = 512
    config.stride = 512
    config.bos = "auto"
    config.methods = ("svd", "ae", "quant", "quant_freq", "quant_gptq")
    config.rates = (5.0, 10.0, 16.0)
    config.method_options = {"svd": {}, "ae": {"epochs": 30}, "quant": {},
                             "quant_freq": {"calibration": dict(CALIBRATION)},
                             "quant_gptq": {"calibration": {**CALIBRATION, "n_hidden": 8192}}}
    config.outputs = ("tied",)
    return config
