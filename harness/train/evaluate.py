"""Evaluating a finished run outside training:

    python -m harness.evaluate RUN_DIR [--split test] [--samples N] [--max-problems N] [--lm-eval]

evaluates RUN_DIR/final with our protocol (harness/runtime/evaluate.py; written to RUN_DIR/eval_<split>.json) and,
with --lm-eval, lm-eval's generate-until on the same problems, greedy, graded by the same grader (RUN_DIR/lm_eval.json;
harness/tasks/lm_eval_task.py). Both files are written atomically, and harness.plot's table shows them next to the
accuracy the run logged.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from harness.config import load_run_config
from harness.core.metrics import atomic_write
from harness.core.seeding import derive_seed
from harness.runtime import models
from harness.runtime.evaluate import evaluate
from harness.train.build import build_engine, build_task


def evaluate_run(run_dir: Path, split: str = "test", samples: int | None = None, max_problems: int | None = None,
                 lm_eval: bool = False, max_new_tokens: int | None = None, threads: int | None = None) -> dict:
    """Evaluate RUN_DIR/final with the run's own task and eval settings (overridable); returns what was written."""
    cfg = load_run_config(run_dir / "config.yaml")
    final = run_dir / "final"
    if not (final / "config.json").exists():
        raise FileNotFoundError(f"{run_dir}: no final checkpoint ({final}/config.json); has the run finished?")
    if threads:
        torch.set_num_threads(threads)
    task = build_task(cfg)
    if split not in ("train", "validation", "test"):
        raise ValueError(f"--split {split!r}: expected train, validation or test")
    ecfg = cfg.eval.model_copy(update={k: v for k, v in (("samples", samples), ("max_problems", max_problems))
                                       if v is not None})
    budget = max_new_tokens or cfg.sampling.max_new_tokens
    mcfg = cfg.model.model_copy(update={"init_run": None, "hub": None, "gguf_package": None, "gguf_file": None,
                                        "path": str(final)})
    tok, model = models.load(mcfg, seed=cfg.seed)
    model.eval()
    engine = build_engine(cfg.model_copy(update={"progress": False}), model, tok)
    written = {}
    res = evaluate(engine, task, split, ecfg, budget, seed=derive_seed(cfg.seed, "evaluate_cli"))
    res.update(run=run_dir.name, checkpoint="final", task=task.name, max_new_tokens=budget)
    atomic_write(run_dir / f"eval_{split}.json", json.dumps(res, indent=1) + "\n")
    written[f"eval_{split}.json"] = res
    if lm_eval:
        from harness.tasks.lm_eval_task import run_lm_eval   # lazy: lm-eval is an optional install (.[tasks])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        le = run_lm_eval(final, task, split, run_dir / "lm_eval_data", budget, ecfg.max_problems, device=device)
        le["t_eval"] = time.perf_counter() - t0
        atomic_write(run_dir / "lm_eval.json", json.dumps(le, indent=1) + "\n")
        written["lm_eval.json"] = le
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory with config.yaml and final/ (made by harness.launch.sweep)")
    p.add_argument("--split", default="test", help="train, validation or test (default: test)")
    p.add_argument("--samples", type=int, default=None, help="samples per problem (default: the run's eval.samples)")
    p.add_argument("--max-problems", type=int, default=None, help="first N problems (default: the run's setting)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's sampling.max_new_tokens")
    p.add_argument("--lm-eval", action="store_true", help="also run lm-eval on final/ (greedy, same grader)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir)
    if not (run_dir / "config.yaml").exists():
        print(f"error: {run_dir} has no config.yaml (not a run directory)", file=sys.stderr)
        return 2
    try:
        written = evaluate_run(run_dir, a.split, a.samples, a.max_problems, a.lm_eval, a.max_new_tokens, a.threads)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in written.items():
        extra = f", greedy {r['acc_greedy']:.3f}" if "acc_greedy" in r else ""
        print(f"{run_dir / name}: acc {r['acc']:.4f}{extra} on {r['n_problems']} {r['split']} problems "
              f"({r.get('samples', 1)} samples, {r['t_eval']:.1f} s)")
    return 0
