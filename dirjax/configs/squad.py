"""SQuAD v1.1 fine-tuning of bert-base-uncased with its embedding compressed by SVD or the
direction AutoEncoder.

    .venv/bin/python run.py --config configs/squad.py --workdir runs/squad \\
        --config.data_dir=../shared/data

Paper settings: lr 3e-5, effective batch 16, 2 epochs, windows of 384 tokens overlapping by
128, n-best 20, answers of at most 30 tokens; rates 2.5, 5, 10; original/svd/ae with frozen
codes. Needs `<data_dir>/squad/train-v1.1.json` (the shared folder has only the dev file) and
a GPU. Dev exact match / F1 in percent, official normalisation.
"""
from dirjax.configs.glue import get_config as glue_config


def get_config():
    c = glue_config()
    c.tasks = ("squad",)
    c.lr = 3e-5
    c.batch_size = 16
    c.micro_batch_size = 16
    c.epochs = 2
    c.max_length = 384
    c.stride = 128
    c.n_best = 20
    c.max_answer_length = 30
    c.train_file = "train-v1.1.json"   # under <data_dir>/squad/; without data_dir: the Hub
    c.pad_multiple = 64
    return c
