# Set-up and the two everyday commands. `make demo` and `make test` create .venv when it is missing.
# GPU users: make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu121" EXTRAS=dev,notebooks,gpu
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,notebooks
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench reproduce clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes; torch first, pinned, so no other package pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## trains demo-ance and demo-dance, then writes runs/reports/demo/index.html (all under runs/)
	$(BIN)/python -m dance_analysis.demo

# ruff's rules are in pyproject.toml ([tool.ruff]); `make test` lints first.
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# The rag24 experiment: 2 topic folds x seeds x (ANCE, DANCE stage 1, DANCE, control), report in reports/rag24/ (rerun to resume).
reproduce: $(STAMP)
	$(BIN)/python -m dance_analysis.reproduce

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
