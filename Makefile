# README command 1: `make tiny`   (set-up + tiny sweep + plots, CPU)
# README command 2: `make test`   (set-up + the whole test suite; what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup tiny test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

tiny: setup
	$(PY) -m harness.sweep experiments/tiny.yaml
	$(PY) -m harness.plot results/tiny

test: setup
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/iteration_time.py

clean:
	rm -rf $(VENV) results/*/
