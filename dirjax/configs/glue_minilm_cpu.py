"""all-MiniLM-L6-v2 fine-tuned on RTE, MRPC (and STS-B) with its embedding compressed 10x:
original vs SVD vs direction AE, 3 seeds each, sized for a 2-core CPU.

    .venv/bin/python run.py --config configs/glue_minilm_cpu.py \\
        --workdir runs/glue_minilm_cpu --config.data_dir=../shared/data

Paper settings (effective batch 32, 3 epochs, max length 128, linear warm-up 10% and decay,
AdamW wd 0.01) except two choices this model needs: mean pooling (all-MiniLM-L6-v2 is a
sentence-transformers checkpoint without a pooler; its [CLS] state left RTE at one class) and
lr 5e-5. Embedding treatment `frozen_codes` (AE and SVD: codes frozen, decoder trained; the
dense original trains whole: there frozen_codes == full). Dev metrics: RTE accuracy, MRPC F1
and accuracy. Rows are appended to results.json as runs finish; a rerun resumes. STS-B: the
shared data has only dev.tsv, so add "stsb" to `tasks` only with network (`--config.data_dir=`
empty reads the Hub's glue) or a local train.tsv.
The quantisers at rates 10 and 16 against those rows (docs/glue_minilm_cpu.md; the original's
rows are not redone):

    .venv/bin/python run.py --config configs/glue_minilm_cpu.py --workdir runs/glue_minilm_low \
        --config.data_dir=../shared/data --config.reference=False \
        --config.methods="('vq',)" --config.rates="(16.0,)"      # then ('quant',) at (10.0,)

Cost here: ~2 min per RTE epoch, ~2.4 min per MRPC epoch (20-26 examples/s), 2 h 18 min for
all 18 runs on a 2-core CPU. Expected (docs/glue_minilm_cpu.md, dev, mean of 3 seeds): RTE
accuracy original 56.9, SVD 54.9, AE 54.6; MRPC F1 86.6 / 84.7 / 84.4: AE and SVD level.
"""
from dirjax.configs.glue import get_config as glue_config


def get_config():
    config = glue_config()
    config.model = "minilm-l6"
    config.tasks = ("rte", "mrpc")
    config.rates = (10.0,)
    # the comparison first: if a run is cut short, SVD and AE have every seed
    config.methods = ("svd", "ae", "original")
    config.seeds = (1, 2, 3)
    # all-MiniLM-L6-v2 has no pooler and was trained to be read by mean pooling
    # (its sentence-transformers config); its [CLS] state is untrained, and with it RTE stayed
    # at one class (2e-5: 53.4 / 52.7 % after 2 epochs; 1e-4: train loss 0.694, 46.2 %).
    config.pooling = "mean"
    # small BERTs are fine-tuned with higher rates than bert-base's 2e-5 (Turc et al. 2019)
    config.lr = 5e-5
    return config
