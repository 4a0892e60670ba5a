"""Shared by the end-to-end tests: run the harness's command-line entry points as a user would."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


# Set in the test process by in-process DeepSpeed runs (tests/test_backends.py); a command a user types has none,
# and a leftover WORLD_SIZE / MASTER_ADDR makes lm-eval (accelerate) try to join a process group.
DIST_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK",
             "CROSS_SIZE"}


def env() -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**clean, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def sh(*args, cwd, timeout=None):
    """`python -m ARGS` in `cwd`, output captured."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env(),
                          timeout=timeout)

# Metrics columns that measure time (and memory): they differ between two runs of the same config, everything else
# must not.
TIMING = {"wall_s", "eval_s", "device_s", "t_eval", "t_generate", "t_mc_rollouts", "t_collect_other", "t_train",
          "t_sync", "t_select", "t_track", "rss_peak_gb", "gpu_peak_gb"}


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# The mini model every end-to-end test trains (a 1-layer Llama, 24 new tokens) and its task (2-3 operations), as
# lines of a sweep's `defaults:`; each test adds the train/eval settings and groups it is about.
MINI_TASK = """  task: {name: arithmetic, n_train: 200, n_validation: 8, n_test: 8, min_ops: 2, max_ops: 3}
"""
MINI_MODEL = """  model: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64}
  sampling: {temperature: 1.0, top_p: 1.0, max_new_tokens: 24}
"""
# Its training settings, an SFT start and the head of an RL group from it, 2 seeds (the group's variants follow).
MINI_RUNS = """  train: {prompts_per_iteration: 4, samples_per_prompt: 4, epochs: 1, batch_size: 8, micro_batch_size: 4,
          lr: 1.0e-4, checkpoint_every: 1}
  eval: {every: 2, samples: 2, temperature: 1.0, top_p: 1.0}
  progress: false
groups:
  - name: sft
    set: {algorithm: sft, train.iterations: 20, train.lr: 3.0e-3, eval.every: 0}
  - name: rl
    init_from: sft
    seeds: [0, 1]
"""
# The mini sweep: SFT, then PPO and VinePPO from it, 2 seeds, 3 iterations (tests/test_e2e.py, test_backends.py).
MINI = """name: mini
workers: 2
defaults:
""" + MINI_TASK + MINI_MODEL + MINI_RUNS + """    variants:
      - {algorithm: ppo, train.iterations: 3}
      - {algorithm: vineppo, train.iterations: 3, algo: {K: 2}}
"""
