"""Shared by the end-to-end tests: run the harness's command-line entry points as a user would."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def sh(*args, cwd, timeout=None):
    """`python -m ARGS` in `cwd`, output captured."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env(),
                          timeout=timeout)
