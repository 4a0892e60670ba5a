"""Start gates: what a starting run (the SFT stage) must reach before the runs that start from it may run.

A group with `init_from: sft` may say `require: {split: validation, acc_greedy: 0.95}`. When the start falls short,
its dependents never run: the local executor marks them blocked, the SLURM job of the start exits non-zero (so the
afterok dependents are cancelled), and a dependent that is started anyway refuses before it trains. Every path
reports the same line, naming the run, the split, the metric, its value and the bar.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from harness.core.metrics import read_jsonl


class GateError(RuntimeError):
    """A start did not reach what its dependents require."""


def final_eval(run_dir: Path, split: str) -> dict | None:
    """The run's evaluation row on `split` after its last iteration, or None."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    last = (cfg or {}).get("train", {}).get("iterations")
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl")
            if r.get("kind") == "eval" and r.get("split") == split and r.get("iteration") == last]
    return rows[-1] if rows else None


def check(run_dir: Path, gate: dict | None) -> str | None:
    """None when the finished run in `run_dir` meets `gate` (a dumped harness.config.Gate), else why not."""
    if not gate:
        return None
    run_dir = Path(run_dir)
    row = final_eval(run_dir, gate["split"])
    if row is None:
        return f"start {run_dir.name} has no final {gate['split']} evaluation to check its gate against"
    short = [f"{gate['split']} {m} {row.get(m, float('nan')):.3f} < {bar:g}"
             for m, bar in gate_bars(gate).items() if not row.get(m, -1.0) >= bar]
    if short:
        return (f"start {run_dir.name} failed its gate: {'; '.join(short)} (the bar is the `require:` of the groups "
                f"that start from it; see {run_dir / 'metrics.jsonl'})")
    return None


def start_short(run, out: Path) -> str | None:
    """Why `run` (a harness.config.Run) may not start from its start in `out` (done, short of the gate), or None."""
    g = run.cfg.model.init_require
    return check(Path(out) / run.depends_on[0], g.model_dump()) if run.depends_on and g is not None else None


def gate_bars(gate: dict) -> dict[str, float]:
    return {m: gate[m] for m in ("acc", "acc_greedy") if gate.get(m) is not None}


def describe(gate: dict) -> str:
    return ", ".join(f"{gate['split']} {m} >= {bar:g}" for m, bar in gate_bars(gate).items())
