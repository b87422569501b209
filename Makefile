# Set-up and the two everyday commands. `make demo` and `make test` create .venv when it is missing.
# torch comes first, pinned, from the index the machine needs (README, Set-up):
#   CPU-only machines:  make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   GPU machines:       make install EXTRAS=gpu,dev,notebooks    (the default index's Linux wheel is a CUDA build)
# With neither, pip takes torch==2.13.0 from the default index (a CUDA build of several GB on Linux) unless a local
# CPU wheel is found first. EXTRAS holds exactly one of cpu (faiss-cpu) and gpu (faiss-gpu-cu12): both write the
# same faiss package.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= cpu,dev,notebooks
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench reproduce clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

comma := ,
FAISS_EXTRAS := $(filter cpu gpu,$(subst $(comma), ,$(EXTRAS)))
ifneq ($(words $(FAISS_EXTRAS)),1)
$(error EXTRAS=$(EXTRAS) must name exactly one of cpu and gpu: faiss-cpu and faiss-gpu-cu12 write the same faiss package)
endif

# Reinstall when the project's metadata changes; torch first, pinned, so no other package pulls another build.
# The gpu extra first removes any faiss (an earlier faiss-cpu would share, and could hide, faiss-gpu's files), and
# dance-doctor then stops the install when the demo could not search on the GPU (faiss must see the GPUs torch sees).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH)
ifeq ($(FAISS_EXTRAS),gpu)
	$(BIN)/pip uninstall --yes faiss-cpu faiss-gpu-cu12
endif
	$(BIN)/pip install -e ".[$(EXTRAS)]"
ifeq ($(FAISS_EXTRAS),gpu)
	$(BIN)/dance-doctor --no-timing train/demo-dance.yaml
endif
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
