"""Regenerate every golden fixture under tests/fixtures (needs torch==2.13.0 + transformers).

    make fixtures        # or: .venv/bin/python scripts/make_fixtures.py

Runs the per-family scripts in turn; each builds tiny random Hugging Face checkpoints with
transformers-PyTorch, saves them as safetensors, and writes the reference outputs that the
torch-free tests compare against.
"""
import runpy
from pathlib import Path

HERE = Path(__file__).parent

for script in ("fixtures_gpt2_bert.py", "fixtures_llama.py", "fixtures_gemma3.py",
               "fixtures_export.py"):   # the export reads the tiny fixtures above
    print(f"== {script}")
    runpy.run_path(str(HERE / script), run_name="__main__")
