"""GLUE fine-tuning of bert-base-uncased with its embedding compressed by SVD or the direction
AutoEncoder (the paper's downstream table), all eight tasks.

    .venv/bin/python run.py --config configs/glue.py --workdir runs/glue \\
        [--config.data_dir=../shared/data] [--config.tasks="('rte','mrpc')"]

Paper settings: lr 2e-5, effective batch 32, 3 epochs, max length 128, AdamW (wd 0.01) with
10% linear warm-up then linear decay; rates 2.5, 5, 10; methods original/svd/ae; embedding
treatment `frozen_codes` (codes frozen, decoder trained; for SVD its two factors; the dense
original trains whole). Without data_dir the tasks come from the Hub (`datasets`); the shared
folder lacks some train files (STS-B, QNLI, QQP, MNLI). Meant for a GPU: on a 2-core CPU one
bert-base epoch of RTE takes hours. Expected (paper, bert-base): AE above SVD at each rate.
"""
from dirjax.config import base_config


def get_config():
    c = base_config("finetune")
    c.model = "bert-base-uncased"
    c.data_dir = ""                     # the Hub; or --config.data_dir=../shared/data
    c.tasks = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
    c.methods = ("original", "svd", "ae")
    c.rates = (2.5, 5.0, 10.0)
    c.seeds = (1,)
    c.embedding = "frozen_codes"        # or "frozen", "full"
    # per method, passed to dirjax.compress.compress (e.g. --config.method_options.ae.epochs=5)
    c.method_options = {"svd": {}, "ae": {"epochs": 30}}
    c.max_length = 128
    c.pooling = "auto"                  # the checkpoint's pooler when it has one, else [CLS]
    c.lr = 2e-5
    c.batch_size = 32                   # effective
    c.micro_batch_size = 32             # lower it to accumulate gradients
    c.epochs = 3
    c.compute_dtype = "float32"         # "bfloat16" on accelerators
    return c
