"""dirjax at the byte budgets of llama.cpp's quantisation types (the dirjax side of
bench/llamacpp_compare.py): each rate is 32 / (bits per entry of a llama.cpp type).

    python run.py --config configs/llamacpp_rates.py:smollm2 --config.data_dir=../shared/data
    python run.py --config configs/llamacpp_rates.py:smollm2-vq --config.data_dir=../shared/data
    python run.py --config configs/llamacpp_rates.py:gemma3 --config.data_dir=../shared/data
    python run.py --config configs/llamacpp_rates.py:gemma3-vq --config.data_dir=../shared/data

(all four share the work directory runs/llamacpp_rates; then `.venv/bin/python
bench/llamacpp_compare.py` reads their rows from runs/llamacpp_rates/results.json.)

Bits per entry of llama.cpp's types (bytes per block / entries per block, from
`ggml_row_size`; the tables are stored as 2,304- or 1,280-wide rows, 4 or 2 table rows each,
so every 256-wide super-block is whole): Q8_0 8.5 (34 B / 32), Q4_K 4.5 (144 B / 256), Q3_K
3.4375 (110 / 256), IQ3_XXS 3.0625 (98 / 256), Q2_K 2.625 (84 / 256), IQ2_XXS 2.0625 (66 /
256), IQ1_S 1.5625 (50 / 256). The rates below are 32 / those, exactly (RATES).

Presets, each the evaluation setup of its model's config, input and tied head replaced
("tied" only):
  smollm2     configs/smollm2_wikitext.py (WikiText-2 raw test, 16,384 tokens, no BOS),
              quant_gptq at all seven rates, calibrated as quality_sweep.py:smollm2
              (WikiText-2 validation, 8,192 final hidden states)
  smollm2-vq  vq with quality_sweep.py's 12-bit books (TIERS12, prob_weight 0.5, as
              quality_sweep.py:smollm2-low12) at the three rates above 10.67 (Q2_K, IQ2_XXS,
              IQ1_S: below 3 bits per entry, where vector codes beat scalar ones)
  gemma3      configs/gemma3_wikitext.py (16,384 tokens, BOS before each window),
              quant_gptq at all seven rates
  gemma3-vq   vq with vq's default tiers (the 12-bit books were not run on Gemma's 262,144
              rows: 2-3x vq's ~17-20 min a rate on the 2-core CPU) at the three high rates

Expected: see the table bench/llamacpp_compare.py prints (docs/results.md, "Against llama.cpp's
quantisers"); at the same bytes quant_gptq / vq stay within a few percent of the original
model's perplexity down to ~2 bits per entry, where llama.cpp's types fall further behind.
"""
from dirjax.configs.gemma3_wikitext import get_config as gemma3_config
from dirjax.configs.quality_sweep import TIERS12
from dirjax.configs.smollm2_wikitext import get_config as smollm2_config

# llama.cpp type -> bits per entry (its bytes per block * 8 / entries per block)
BITS = {"Q8_0": 34 * 8 / 32, "Q4_K": 144 * 8 / 256, "Q3_K": 110 * 8 / 256,
        "IQ3_XXS": 98 * 8 / 256, "Q2_K": 84 * 8 / 256, "IQ2_XXS": 66 * 8 / 256,
        "IQ1_S": 50 * 8 / 256}
RATES = {name: 32.0 / bits for name, bits in BITS.items()}   # fp32 bytes / stored bytes
VQ_TYPES = ("Q2_K", "IQ2_XXS", "IQ1_S")                     # above rate 10.67 (< 3 bits)
CALIBRATION = {"dataset": "wikitext-2", "split": "validation", "n_hidden": 8192}
PRESETS = ("smollm2", "smollm2-vq", "gemma3", "gemma3-vq")


def get_config(preset: str = "smollm2"):
    if preset not in PRESETS:
        raise ValueError(f"llamacpp_rates takes one of {', '.join(PRESETS)}, got {preset!r}")
    config = {"smollm2": smollm2_config, "gemma3": gemma3_config}[preset.split("-")[0]]()
    config.outputs = ("tied",)
    if preset.endswith("-vq"):
        options = {"calibration": dict(CALIBRATION)}
        if preset == "smollm2-vq":
            options.update(tiers=TIERS12, prob_weight=0.5)
        config.methods = ("vq",)
        config.method_options = {"vq": options}
        config.rates = tuple(RATES[t] for t in VQ_TYPES)
    else:
        config.methods = ("quant_gptq",)
        config.method_options = {"quant_gptq": {"calibration": dict(CALIBRATION)}}
        config.rates = tuple(RATES.values())
    return config
