"""GPT-2 (124M, Hub id "gpt2") on WikiText-2 raw test: causal perplexity, SVD vs direction AE.

    python run.py --config configs/gpt2_wikitext.py --config.data_dir=../shared/data

Needs network for the weights (Hub, safetensors). Hugging Face's perplexity recipe: windows
of 1024 with stride 512 over the whole test text (about 287k tokens; slow on a CPU, lower
max_tokens to try it: --config.max_tokens=16384). 50257 x 768 tied table, rates 2.5 to 20.
Work directory: runs/gpt2_wikitext.

Expected: not measured here (no network for the weights on the development machine).
"""
from dirjax.config import base_config


def get_config():
    config = base_config()
    config.model = "gpt2"
    config.task = "causal_ppl"
    config.dataset = "wikitext-2-raw"
    config.split = "test"
    config.max_tokens = 0
    config.max_length = 1024
    config.stride = 512
    config.batch_size = 2
    config.methods = ("svd", "ae")
    config.rates = (2.5, 5.0, 10.0, 20.0)
    config.outputs = ("tied", "original")
    return config
