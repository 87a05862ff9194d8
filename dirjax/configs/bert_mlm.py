"""bert-base-uncased: masked-LM perplexity on WikiText-2 raw test, SVD vs direction AE.

    python run.py --config configs/bert_mlm.py --config.data_dir=../shared/data

Needs network for the weights (Hub, safetensors, BertForMaskedLM with its tied MLM head).
Whole-word masking with p = 0.15 on the lines of at least 20 word pieces, seed 0, every
masked token replaced by [MASK]; metric exp(mean NLL of the masked tokens). 30522 x 768
table, rates 2.5 to 20, the MLM decoder tied (output=tied) or kept (output=original).
Work directory: runs/bert_mlm.

Expected: not measured here (no network for the weights on the development machine).
"""
from dirjax.config import base_config


def get_config():
    config = base_config()
    config.model = "bert-base-uncased"
    config.task = "mlm_ppl"
    config.dataset = "wikitext-2-raw"
    config.split = "test"
    config.max_length = 512
    config.batch_size = 8
    config.mlm_probability = 0.15
    config.mlm_min_tokens = 20
    config.seed = 0
    config.methods = ("svd", "ae")
    config.rates = (2.5, 5.0, 10.0, 20.0)
    config.outputs = ("tied", "original")
    return config
