"""Every method at rates 2, 5, 10, budget-matched in BYTES, on SmolLM2 and MiniLM.

    python run.py --config configs/quality_sweep.py:smollm2 --config.data_dir=../shared/data
    python run.py --config configs/quality_sweep.py:minilm --config.data_dir=../shared/data
    python run.py --config configs/quality_sweep.py:smollm2-low --config.data_dir=../shared/data
    python run.py --config configs/quality_sweep.py:minilm-low --config.data_dir=../shared/data
    python run.py --config configs/quality_sweep.py:gemma3-low --config.data_dir=../shared/data
    python run.py --config configs/quality_sweep.py:smollm2-low12 --config.data_dir=../shared/data
    python run.py --config configs/quality_sweep.py:smollm2-low12-e2e \\
        --config.data_dir=../shared/data

SmolLM2-135M: causal perplexity on the first 16,384 tokens of WikiText-2 raw test (32 windows
of 512, no BOS), input and tied head replaced ("tied") and input only ("original").
MiniLM-L6: STS-B dev Spearman x100 (input side only). Gemma 3 270M ("gemma3-low" only): the
setup of configs/gemma3_wikitext.py (16,384 tokens, BOS before each window, tied head only).
Baselines: SVD and the paper's AE.

Quantisers (dirjax/compress/quantize.py; rate counted in packed bytes against fp32):
  quant       random rotation + mean row removed + per-row int-b RTN with fp16 scale/offset,
              bits per row allocated by squared error to spend the budget exactly
  quant_freq  the same with bits per row allocated by token frequency on calibration text
              DISJOINT from the evaluation text (WikiText-2 validation; for MiniLM the same
              text through its WordPiece tokenizer): frequent rows precise, the tail coarse
  quant_gptq  (SmolLM2 only: needs an LM head) quant_freq's widths, codes by GPTQ against
              half squared error, half the tied head's logit error on 8,192 calibration states
`calibration` (method option) names that text; the experiment turns it into `counts` `[V]`
(and `hidden` `[N, d]` when n_hidden > 0) with `dirjax.compress.calib.collect`.

Expected (what this config prints; docs/results.md has the tables): SmolLM2 with
--config.max_tokens=4096 (original 30.64), tied / original head at rate 10: quant_gptq 32.34 /
31.02, quant_freq 34.32 / 31.07, quant 40.75 / 31.29, exact SVD 36,406 / 11,636, AE 9,052 /
10,653; at 16,384 tokens (original 28.82) quant_gptq 30.09 / 29.19. MiniLM STS-B (original
86.73) at rate 10: quant 86.73, quant_freq 86.71, exact SVD 71.40, AE 66.78. Rates 5 and 2 keep
the quantisers within 0.2% of the original.
"-low" (2026-12-02), rate 16 / 32, tied: SmolLM2 (original 28.82) vq 32.70 / 43.35, SVD 22,532 /
26,978, AE 6,413 / 8,893; MiniLM STS-B vq 86.68 / 85.92, SVD 69.03 / 63.91, AE 63.65 / 63.19;
Gemma 3 (original 23.47) vq 25.89 / 31.51, SVD 4,654 / 3,858, AE 69,376 / 69,079 (~70 min on
the shared 2-core CPU, ~37 of them vq's compression). "smollm2-low12" at rate 16 / 32: tied 32.06 /
41.99, head kept 29.92 / 34.51 (479 s / 620 s to compress); over seeds 0-2
(--config.method_options.vq.seed=S) tied 32.21 (1.118x) / 42.64 (1.479x) on average.
"smollm2-low12-e2e" (2026-12-03, rate 16 only, --config.rates="(16.0,)"): the same vq refined
end to end through the frozen model (24 steps of 4 x 256 WikiText-2 validation tokens): tied
32.14 (1.115x) against 32.32 for its unrefined compression in the same work directory
(held-out calibration KL 0.0526 -> 0.0510); 471 s of refinement on the loaded 2-core CPU.
With --config.method_options.vq.e2e.steps=96 --config.method_options.vq.e2e.tokens=65536:
31.96 (1.109x), 1,003 s of refinement.
"smollm2-low12" rate 16, seed 0, rerun 2026-12-04 in a fresh work directory: tied 32.32 (the
same as in the e2e run's; deterministic), not the 32.06 above: the code changed in between
(the 2026-12-03 refactor that moved the quantisers' shared code); the low12 figures above
are older than the code, to be re-measured.
"""
from dirjax.configs.gemma3_wikitext import get_config as gemma3_config
from dirjax.configs.minilm_sts import get_config as minilm_config
from dirjax.configs.smollm2_wikitext import get_config as smollm2_config

CALIBRATION = {"dataset": "wikitext-2", "split": "validation", "n_hidden": 0}


MODELS = ("smollm2", "minilm", "smollm2-low", "minilm-low", "gemma3-low", "smollm2-low12",
          "smollm2-low-e2e", "smollm2-low12-e2e")
# "-e2e": the preset's vq refined end to end through the frozen model (dirjax/compress/e2e.py)
# on the calibration text; its fields can be set on the command line
# (--config.method_options.vq.e2e.steps=100)
E2E = {"steps": 24, "lr": 3e-3, "tokens": 24576, "seq": 256, "batch": 4, "held_tokens": 1024,
       "seed": 0}
# "smollm2-low12": vq with 12-bit books at 1, 2 and 4 bits per entry (groups of 12, 6, 3) and
# row weights half counts, half the head's mean predicted probability (best found at rate 16;
# ~7 min to compress on the 2-core CPU against ~2 for the defaults)
TIERS12 = ((16, 8), (12, 12), (6, 12), (3, 12))


def get_config(model: str = "smollm2"):
    """The evaluation setup of configs/smollm2_wikitext.py, minilm_sts.py or gemma3_wikitext.py.
    "<model>-low": rates 16 and 32 (2 and 1 bits per entry), where scalar codes stop (a scalar
    grid cannot go below 1 bit per entry): SVD, the AE and the vector codes `vq`."""
    if model not in MODELS:
        raise ValueError(f"quality_sweep takes one of {', '.join(MODELS)}, got {model!r}")
    if model.endswith("-e2e"):
        config = get_config(model.removesuffix("-e2e"))
        config.methods = ("vq",)
        config.method_options = {"vq": {**config.method_options.vq.to_dict(), "e2e": dict(E2E)}}
        config.outputs = ("tied",)
        return config
    config = {"smollm2": smollm2_config, "minilm": minilm_config,
              "gemma3": gemma3_config}[model.split("-")[0]]()
    if model.endswith("-low"):
        config.methods = ("svd", "ae", "vq")
        config.method_options = {"svd": {}, "ae": {"epochs": 30},
                                 "vq": {"calibration": {**CALIBRATION, "n_hidden": 8192}}}
        config.rates = (16.0, 32.0)
        return config
    if model.endswith("-low12"):
        config.methods = ("vq",)
        config.method_options = {"vq": {"calibration": {**CALIBRATION, "n_hidden": 8192},
                                        "tiers": TIERS12, "prob_weight": 0.5}}
        config.rates = (16.0, 32.0)
        return config
    config.methods = ("svd", "ae", "quant", "quant_freq")
    config.method_options = {"svd": {}, "ae": {"epochs": 30}, "quant": {},
                             "quant_freq": {"calibration": dict(CALIBRATION)}}
    if model == "smollm2":   # GPTQ fits the tied LM head: MiniLM has none
        config.methods += ("quant_gptq",)
        config.method_options["quant_gptq"] = {"calibration": {**CALIBRATION, "n_hidden": 8192}}
    config.rates = (2.0, 5.0, 10.0)
    return config
