"""The harness's GRPO iteration next to TRL's GRPOTrainer: same model, prompts, reward, batch and settings.

    python benchmarks/trl_grpo.py --model DIR [--bench ../shared/reference/trl-bench] [--trl-python PY]
                                  [--rounds 3] [--iters 10] [--warmup 2] [--threads 2] [--beta 0.04]

DIR is a model + tokenizer folder made by the bench's make_tiny.py (e.g. `python make_tiny.py --out DIR
--sft-seconds 60`). The bench (its README lists TRL's settings) supplies the prompts (`arith_task.make_problem` with
random.Random(1000 + seed)) and the reward (`arith_task.score`); both harnesses get 32 prompts x 8 samples per
iteration, at most 64 new tokens at T = 1, fp32, lr 1e-4 constant, k3 KL at beta, grad clip 1, micro-batches of 32
completions, one epoch of one minibatch (so neither runs an old-log-prob pass: the ratio is exactly 1).
Each round runs TRL's own script in its own environment (`--trl-python`, a venv with `pip install -c
constraints.txt trl`: TRL is not a project dependency), then the harness in this process; the printed ratio is the
median of the rounds' ratios (goal <= 0.7x). Time span: from generation to after the optimizer step, as TRL's.
"""
from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import algorithms  # noqa: E402
from harness.runtime import models# noqa: E402
from harness.config import RunConfig  # noqa: E402
from harness.runtime.engines.hf import HFEngine  # noqa: E402


class BenchTask:
    """The bench's arithmetic task behind the harness's task interface (harness/tasks/__init__.py)."""
    name, stop = "trl-bench-arith", ()

    def __init__(self, arith, n: int, seed: int):
        rng = random.Random(1000 + seed)
        self.rows = [{"id": i, "question": p, "answer": str(a)}
                     for i, (p, _, a) in enumerate(arith.make_problem(rng) for _ in range(n))]
        self.grade = lambda response, answer: arith.score(response, answer)

    def problems(self, split: str) -> list[dict]:
        return self.rows

    def prompt(self, problem: dict) -> str:
        return problem["question"]


def ours(model_dir: Path, arith, a) -> dict:
    cfg = RunConfig.model_validate({
        "algorithm": "grpo", "seed": a.seed, "task": {"name": "arithmetic"},
        "model": {"path": str(model_dir)},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64},
        "train": {"iterations": a.warmup + a.iters, "prompts_per_iteration": 32, "samples_per_prompt": 8,
                  "batch_size": 256, "micro_batch_size": a.micro_batch, "epochs": 1, "lr": a.lr,
                  "schedule": "constant", "warmup_ratio": 0.0, "kl_coef": a.beta, "precision": "fp32"}})
    tok, policy = models.load(cfg.model)
    engine = HFEngine(policy, tok, cfg.engine.chunk_size, progress=False)
    algo = algorithms.get("grpo")(cfg, policy, tok, engine, BenchTask(arith, a.prompts, a.seed))
    rows = []
    for it in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        batch = algo.collect(it)
        t1 = time.perf_counter()
        stats = algo.update(batch)
        t2 = time.perf_counter()
        gen = engine.stats.pop().seconds.get("generate", 0.0)
        if it >= a.warmup:
            rows.append({"s_iter": t2 - t0, "generate": gen, "other": t1 - t0 - gen, "train": t2 - t1,
                         "reward": stats["train_reward"], "len": stats["response_len"]})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def trl(model_dir: Path, a) -> dict:
    cmd = [a.trl_python, "trl_grpo_tiny.py", "--model", str(model_dir), "--iters", str(a.iters), "--warmup",
           str(a.warmup), "--threads", str(a.threads), "--beta", str(a.beta), "--lr", str(a.lr), "--micro-batch",
           str(a.micro_batch), "--prompts", str(a.prompts), "--seed", str(a.seed)]
    out = subprocess.run(cmd, cwd=a.bench, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"TRL's script failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    median = float(re.search(r"median ([\d.]+)s", out.stdout).group(1))
    gen, rest, train = (float(x) for x in re.search(
        r"generate ([\d.]+)s, ref-logps\+reward\+advantages ([\d.]+)s, policy fwd/bwd\+optimizer\+rest ([\d.]+)s",
        out.stdout).groups())
    return {"s_iter": median, "generate": gen, "other": rest, "train": train}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="folder made by the bench's make_tiny.py")
    p.add_argument("--bench", default=str(ROOT / "benchmarks" / "trl_bench"), help="the bench folder (a copy of "
                   "shared/reference/trl-bench: arith_task.py, make_tiny.py, trl_grpo_tiny.py)")
    p.add_argument("--trl-python", default=None, help="python of an environment with TRL (default: skip TRL)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.bench = str(Path(a.bench).resolve())
    a.trl_python = a.trl_python and str(Path(a.trl_python).absolute())
    model_dir = Path(a.model).resolve()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.bench)
    import arith_task
    results: dict[str, list[dict]] = {"trl": [], "harness": []}
    for r in range(a.rounds):
        if a.trl_python:
            results["trl"].append(trl(model_dir, a))
        results["harness"].append(ours(model_dir, arith_task, a))
        line = " | ".join(f"{k} {v[-1]['s_iter']:.3f} s/iter" for k, v in results.items() if v)
        print(f"round {r + 1}/{a.rounds}: {line}", flush=True)
    for name, rs in results.items():
        if rs:
            med = {k: statistics.median(x[k] for x in rs) for k in ("s_iter", "generate", "other", "train")}
            print(f"{name:8s} {med['s_iter']:.3f} s/iter (generate {med['generate']:.3f}, ref log-probs + reward + "
                  f"advantages {med['other']:.3f}, train {med['train']:.3f})"
                  + (f"; reward {statistics.median(x['reward'] for x in rs):.3f}, length "
                     f"{statistics.median(x['len'] for x in rs):.1f}" if name == "harness" else ""))
    if results["trl"]:
        ratios = [h["s_iter"] / t["s_iter"] for h, t in zip(results["harness"], results["trl"])]
        print(f"harness / TRL: {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds; "
              f"{min(ratios):.2f}-{max(ratios):.2f}; goal <= 0.7x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
