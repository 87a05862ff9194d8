"""SmolLM2-135M on WikiText-2 raw test: causal perplexity, SVD vs direction AE, both heads.

    python run.py --config configs/smollm2_wikitext.py --config.data_dir=../shared/data
    python run.py --config configs/smollm2_wikitext.py --config.rates="(2.5, 5, 10, 20)"

Without data_dir (or $DIRJAX_DATA_DIR) the text comes from the Hub (`datasets`, wikitext /
wikitext-2-raw-v1), identical to the shared file. First 16,384 tokens, no BOS, 32
non-overlapping windows of 512: 16,352 tokens scored, as the PyTorch reference measurement
(original model: 28.82). Work directory: runs/smollm2_wikitext.

Expected ("tied" = input and tied head both compressed, "original" = input only, head kept;
SVD rows: exact SVD, 2026-12-02; AE rows 2026-11-24, shared 2-core CPU, ~40 min wall):

| method   | rate | rank | ppl, tied | ppl, original head | mean row cosine |
|----------|------|------|-----------|--------------------|-----------------|
| original | 1    | -    | 28.82     |                    | -               |
| svd      | 5    | 113  | 60,965    | 9,070              | 0.806           |
| ae       | 5    | 113  | 6,114     | 8,096              | 0.806           |
| svd      | 10   | 56   | 25,909    | 12,658             | 0.759           |
| ae       | 10   | 56   | 7,011     | 11,653             | 0.760           |

The original matches the PyTorch reference 28.82 (28.8198). The AE beats the exact SVD in all
four settings, by far only when the tied head is compressed too. Every compressed model is
unusable (ppl in the thousands).
"""
from dirjax.config import base_config


def get_config():
    config = base_config()
    config.model = "smollm2-135m"
    config.task = "causal_ppl"
    config.dataset = "wikitext-2-raw"
    config.split = "test"
    config.max_tokens = 16384
    config.max_length = 512
    config.stride = 512
    config.methods = ("svd", "ae")
    config.rates = (5.0, 10.0)
    config.outputs = ("tied", "original")
    return config
