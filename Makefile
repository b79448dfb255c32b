# Two entry points: `make demo` and `make test`. Both create .venv in the repo root if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install-core install-dev lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install-core: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# torch is installed alone first so that pip takes the local CPU wheel instead of a CUDA build.
install-dev: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,train,serve,ray]'

demo: install-core
	$(BIN)/medrecipe demo

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
