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
          "t_sync", "t_select", "rss_peak_gb", "gpu_peak_gb"}


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
