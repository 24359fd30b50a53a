# Everything a fresh machine needs: `make demo` and `make test` create the virtual
# environment, install torch (CPU build by default) and thermodiff, then run.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench-smoke clean

# The diffusers extra (Python >= 3.11) last: where it cannot be installed, its tests skip
# and say so.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q -e ".[diffusers]" || echo "the diffusers extra is not installed: its tests skip"
	touch $(STAMP)

setup: $(STAMP)

# `thermodiff demo` refuses a folder holding a trained run: the target starts its own afresh.
demo: $(STAMP)
	rm -rf demo
	$(BIN)/thermodiff demo --out demo

# Two test workers on two cores, one torch thread each: more threads than cores make
# torch's thread pool spin and run an order of magnitude slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

bench-smoke: $(STAMP)
	rm -rf runs/bench-swissroll-smoke runs/bench-swissroll-paper-smoke
	$(BIN)/thermodiff --quiet bench swissroll --smoke --json runs/smoke-swissroll.json
	$(BIN)/thermodiff --quiet bench swissroll-paper --smoke --json runs/smoke-swissroll-paper.json

clean:
	rm -rf $(VENV) runs demo
