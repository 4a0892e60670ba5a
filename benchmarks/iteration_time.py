"""Time per iteration of VinePPO vs PPO on the tiny task, and where the wall-clock goes.

    python benchmarks/iteration_time.py [--sweep experiments/tiny.yaml] [--iterations 3] [--repeats 5] [--threads 2]
                                        [--attn eager|sdpa]

Uses the configs of the sweep's RL group and the SFT checkpoint that `make tiny` trained (results/<name>/sft-*/final).
The algorithms are measured in alternation (PPO, VinePPO, PPO, ...: `--repeats` rounds of `--iterations` iterations
each after a warm-up iteration), so that a change in the machine's load hits both alike. Prints the median over rounds
of the seconds per iteration, split into generation, MC rollouts, other collection work (log-probs, critic values,
grading) and training, and the VinePPO / PPO ratio (goal: <= 1.5x).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import algorithms  # noqa: E402
from harness import tasks
from harness.runtime import models# noqa: E402
from harness.config import load_sweep, output_dir  # noqa: E402
from harness.runtime.engines.hf import HFEngine  # noqa: E402


def measure(cfg, start: Path, iterations: int, attn: str | None) -> dict:
    task = tasks.get(cfg.task["name"])(tasks.get(cfg.task["name"]).Config(**cfg.task))
    update = {"init_run": None, "path": str(start)} | ({"attn_implementation": attn} if attn else {})
    tok, policy = models.load(cfg.model.model_copy(update=update))
    engine = HFEngine(policy, tok, cfg.engine.chunk_size, progress=False, attn=attn or cfg.engine.attn_implementation)
    algo = algorithms.get(cfg.algorithm)(cfg, policy, tok, engine, task)
    rows = []
    for it in range(iterations + 1):
        t0 = time.perf_counter()
        batch = algo.collect(it)
        t1 = time.perf_counter()
        algo.update(batch)
        t2 = time.perf_counter()
        st = engine.stats.pop()
        gen, mc = st.seconds.get("generate", 0.0), st.seconds.get("mc_rollouts", 0.0)
        if it > 0:                                   # iteration 0 is a warm-up
            rows.append({"total": t2 - t0, "generate": gen, "mc_rollouts": mc, "other": t1 - t0 - gen - mc,
                         "train": t2 - t1})
    return {k: statistics.mean(r[k] for r in rows) for k in rows[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="experiments/tiny.yaml")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per round (after one warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="rounds, the algorithms alternating")
    p.add_argument("--start", default=None, help="SFT checkpoint (default: the sweep's sft run's final/)")
    p.add_argument("--attn", choices=["eager", "sdpa"], default=None, help="override the attention implementation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--algorithms", default="ppo,vineppo")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sweep, runs = load_sweep(a.sweep)
    sft = [r for r in runs if r.cfg.algorithm == "sft"][0]
    start = Path(a.start) if a.start else output_dir(sweep) / sft.id / "final"
    if not (start / "config.json").exists():
        print(f"error: no SFT checkpoint at {start}; run `make tiny` (or the sweep's sft group) first",
              file=sys.stderr)
        return 2
    names = a.algorithms.split(",")
    cfgs = {n: next(r.cfg for r in runs if r.cfg.algorithm == n) for n in names}
    rounds = {n: [] for n in names}
    for _ in range(a.repeats):
        for n in names:
            rounds[n].append(measure(cfgs[n], start, a.iterations, a.attn))
    med = {}
    for n in names:
        med[n] = m = {k: statistics.median(r[k] for r in rounds[n]) for k in rounds[n][0]}
        spread = f"{min(r['total'] for r in rounds[n]):.2f}-{max(r['total'] for r in rounds[n]):.2f}"
        shares = "  ".join(f"{k} {m[k]:.2f}s ({100 * m[k] / m['total']:.0f}%)"
                           for k in ("generate", "mc_rollouts", "other", "train"))
        print(f"{n:>8}: {m['total']:.2f} s/iter ({spread})   {shares}   ({a.threads} threads, "
              f"attention {a.attn or cfgs[n].model.attn_implementation or 'sdpa'} (training), "
              f"{a.attn or cfgs[n].engine.attn_implementation or 'same'} (decoding), median of {a.repeats} rounds x {a.iterations} iterations)")
    if "ppo" in med and "vineppo" in med:
        ratios = sorted(v["total"] / p["total"] for v, p in zip(rounds["vineppo"], rounds["ppo"]))
        print(f"VinePPO / PPO time per iteration: {statistics.median(ratios):.2f}x, median of the {a.repeats} rounds' "
              f"ratios ({ratios[0]:.2f}-{ratios[-1]:.2f}; goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
