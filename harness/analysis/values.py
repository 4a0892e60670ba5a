"""Why VinePPO wins: how accurate are PPO's and VinePPO's value estimates during training (paper §7 / v2 Sec. 7)?

    python -m harness.analyze values results/tiny            # every PPO / VinePPO run of a sweep
    python -m harness.analyze values RUN_DIR... --gt-rollouts 256 --problems 32 --ranking-states 16

Analyzes a run's start (iteration 0), its weight snapshots written during training (`train.keep_every: N` ->
checkpoints/iter_XXXXXX.pt) and, once it is done, its final weights (checkpoints/latest.pt). For each snapshot,
with that snapshot's policy and the run's training sampling parameters:
  1. sample `samples` held-out responses for each of the first `problems` problems of `split`;
  2. take their step states s_0 .. s_{L-1} exactly as VinePPO does (s_0 = the bare prompt);
  3. ground truth V(s) = mean 0/1 reward of `gt_rollouts` continuations (the paper: 256), seeds independent of
     everything else;
  4. the method's estimate at the same states: PPO = its critic's value at the state's last token (the value the
     run used as V(s) for the next token); VinePPO = its own K-rollout MC estimate with the run's K, fresh seeds;
  5. ranking: at `ranking_states` of those states, sample up to `alternatives` distinct non-final next steps; the GT
     Q of each (= V of the child state, gamma = 1, no intermediate reward) by MC; the method's estimate of each
     child; top-1 accuracy = does the method's best child have the highest GT Q (ties: see `top1`).
Results are cached in RUN_DIR/analysis/values/iter_XXXXXX.json (one atomic file per snapshot, with the parameters
that made it); a re-run computes only what is missing, and `harness.plot --report` reads the cache.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from algorithms.vineppo import VinePPO, step_cuts
from harness.config import load_run_config
from harness.core.metrics import atomic_write, read_json, safe_load
from harness.reporting.runs import cache_path, load_cache
from harness.train.build import build
from harness.train.checkpoint import full_policy

METHODS = ("ppo", "vineppo")
DEFAULTS = {"split": "validation", "problems": 32, "samples": 1, "gt_rollouts": 256, "ranking_states": 16,
            "alternatives": 5, "min_alternatives": 3, "draws": 32}


# --- the metrics (pinned by tests/test_analyze.py) ---------------------------------------------------------------
def mae(pred, gt) -> float:
    pred, gt = np.asarray(pred, float), np.asarray(gt, float)
    return float(np.abs(pred - gt).mean()) if len(gt) else float("nan")


def top1(pred, gt, atol: float = 1e-9) -> tuple[float, float]:
    """(score, random baseline) of picking the alternative with the highest predicted value, against GT values.
    Ties, explicitly: every alternative whose GT equals the maximum counts as a correct pick, and a method whose
    maximum prediction is shared picks uniformly among the tied ones, so
        score  = |argmax pred  ∩  argmax gt| / |argmax pred|       (expected accuracy under random tie-breaking)
        random = |argmax gt| / n                                   (1/n when the GT maximum is unique)"""
    pred, gt = np.asarray(pred, float), np.asarray(gt, float)
    best_gt = np.isclose(gt, gt.max(), rtol=0, atol=atol)
    best_pred = np.isclose(pred, pred.max(), rtol=0, atol=atol)
    return float((best_pred & best_gt).sum() / best_pred.sum()), float(best_gt.sum() / len(gt))


# --- states -------------------------------------------------------------------------------------------------------
class State:
    """A state = prompt `p` + the first `k` tokens of `seq` (a response token sequence extending the state by at
    least one token: the critic's value at the state's last token is read from a forward pass over it)."""

    def __init__(self, p: int, seq: list[int], k: int, text: str, step: int):
        self.p, self.seq, self.k, self.text, self.step = p, seq, k, text, step

    def request(self):
        return (self.p, self.seq[:self.k], self.text)


def response_states(task, tokenizer, samples) -> list[State]:
    out = []
    for x in samples:
        body, offsets, cuts = step_cuts(task, tokenizer, x)
        seq = x.token_ids if len(x.token_ids) > len(body) else body + [tokenizer.eos_token_id]
        for i, k in enumerate(cuts):
            out.append(State(x.prompt_index, seq, k, x.text[:offsets[k]] if k < len(offsets) else x.text, i))
    return out


def alternatives(task, tokenizer, state: State, conts, n: int) -> list[State]:
    """Up to `n` distinct child states state + (first step of a sampled continuation), skipping continuations whose
    first step is their last (a terminal child has no value to predict)."""
    out, seen = [], set()
    for c in conts:
        body, offsets, cuts = step_cuts(task, tokenizer, c)
        if len(cuts) < 2 or cuts[1] >= len(body):
            continue
        kc = cuts[1]
        key = tuple(c.token_ids[:kc])
        if key in seen:
            continue
        seen.add(key)
        out.append(State(state.p, state.seq[:state.k] + c.token_ids, state.k + kc, state.text + c.text[:offsets[kc]],
                         state.step + 1))
        if len(out) == n:
            break
    return out


# --- estimates ----------------------------------------------------------------------------------------------------
def mc(algo, states, problems, prompts, iteration, K, tag) -> list[float]:
    """MC value of each state with VinePPO's own estimator (same sampling parameters, token budget and grading);
    it only uses the policy, engine, task and run seed, so it also runs on a PPO run's algorithm object."""
    return VinePPO.mc_values(algo, [s.request() for s in states], problems, prompts, iteration, K=K, seed_tag=tag) \
        if states else []


def critic_values(algo, states, prompts) -> list[float]:
    """PPO's critic at each state's last token: values[t] of the run's batch layout is V(prompt + response tokens
    before target t), so state (p, k) reads position len(prompt) - 1 + k, exactly what GAE used in training."""
    out = []
    mb = algo.cfg.train.micro_batch_size
    for i in range(0, len(states), mb):
        chunk = states[i:i + mb]
        batch = algo.pad([prompts[s.p] for s in chunk], [s.seq for s in chunk])
        v = algo.values(batch)
        out += [float(v[b, len(prompts[s.p]) - 1 + s.k]) for b, s in enumerate(chunk)]
    return out


def estimates(algo, states, problems, prompts, iteration, tag) -> list[float]:
    if algo.cfg.algorithm == "ppo":
        return critic_values(algo, states, prompts)
    return mc(algo, states, problems, prompts, iteration, algo.opts.K, tag)


# --- one snapshot -------------------------------------------------------------------------------------------------
def snapshots(run_dir: Path) -> dict[int, Path | None]:
    """Weights to analyze, by iteration: the run's start (None: rebuilt exactly as the run built it, the critic
    from its seeded initialization), every checkpoints/iter_XXXXXX.pt (`train.keep_every`) and, for a finished
    run, the final weights in checkpoints/latest.pt."""
    out: dict[int, Path | None] = {0: None}
    out.update({int(p.stem.split("_")[1]): p for p in sorted((run_dir / "checkpoints").glob("iter_*.pt"))})
    latest = run_dir / "checkpoints" / "latest.pt"
    if latest.exists() and (read_json(run_dir / "status.json", {}) or {}).get("state") == "done":
        it = safe_load(latest)["loop"]["iteration"]
        out.setdefault(it, latest)
    return out


def load_snapshot(run_dir: Path, path: Path | None):
    """The run's algorithm object (built as the run built it) with the snapshot's policy and critic weights."""
    b = build(load_run_config(run_dir / "config.yaml"), run_dir)
    if path is not None:
        snap = safe_load(path, b.device)
        if "loop" in snap:                             # latest.pt: the weights are in its trainers' save<N>/
            for name, tr in b.algo.trainers.items():
                tr.load(path.parent / snap["loop"]["tag"] / name)
        else:
            b.policy.load_state_dict(snap["policy"])
            if "critic" in snap:
                b.algo.critic.load_state_dict(snap["critic"])
        with full_policy(b.algo, b.policy) as model:
            b.engine.sync(model)
    b.engine.progress = False
    return b.algo


def analyze_snapshot(algo, iteration: int, prm: dict) -> dict:
    t0 = time.perf_counter()
    task, tok, s = algo.task, algo.tokenizer, algo.cfg.sampling
    try:
        problems = task.problems(prm["split"])[:prm["problems"]]
    except KeyError:
        raise ValueError(f"task {task.name!r} has no split {prm['split']!r}") from None
    prompts = [algo.engine.encode_prompt(task.prompt(p)) for p in problems]
    gen = dict(temperature=s.temperature, top_p=s.top_p, stop=task.stop)
    samples = algo.engine.generate(prompts, n=prm["samples"], max_new_tokens=s.max_new_tokens,
                                   seed=algo.seed(iteration, "analysis-responses"), tag="analysis", **gen)
    states = response_states(task, tok, samples)
    gt = mc(algo, states, problems, prompts, iteration, prm["gt_rollouts"], "analysis-gt")
    pred = estimates(algo, states, problems, prompts, iteration, "analysis-method")
    # Ranking: alternatives of a random subset of states (fixed per snapshot), GT and predicted Q of each child.
    rng = random.Random(algo.seed(iteration, "analysis-ranking"))
    chosen = rng.sample(states, min(prm["ranking_states"], len(states)))
    conts = algo.engine.generate([prompts[c.p] + c.seq[:c.k] for c in chosen], n=prm["draws"],
                                 max_new_tokens=[s.max_new_tokens - c.k for c in chosen],
                                 seed=algo.seed(iteration, "analysis-alternatives"), tag="analysis", **gen)
    groups = [alternatives(task, tok, c, conts[i * prm["draws"]:(i + 1) * prm["draws"]], prm["alternatives"])
              for i, c in enumerate(chosen)]
    groups = [g for g in groups if len(g) >= prm["min_alternatives"]]
    children = [c for g in groups for c in g]
    q_gt = mc(algo, children, problems, prompts, iteration, prm["gt_rollouts"], "analysis-gt-children")
    q_pred = estimates(algo, children, problems, prompts, iteration, "analysis-method-children")
    ranking, j = [], 0
    for g in groups:
        score, rand = top1(q_pred[j:j + len(g)], q_gt[j:j + len(g)])
        ranking.append({"gt": q_gt[j:j + len(g)], "pred": q_pred[j:j + len(g)], "top1": score, "random": rand,
                        "children": [c.text for c in g]})
        j += len(g)
    return {"iteration": iteration, "gt": gt, "pred": pred, "step": [x.step for x in states],
            "mae": mae(pred, gt), "n_states": len(states), "ranking": ranking,
            "top1": float(np.mean([r["top1"] for r in ranking])) if ranking else None,
            "top1_random": float(np.mean([r["random"] for r in ranking])) if ranking else None,
            "n_ranking_states": len(ranking), "n_ranking_tried": len(chosen),
            "seconds": round(time.perf_counter() - t0, 1)}


# --- runs, cache, CLI ---------------------------------------------------------------------------------------------
def pick(iterations: list[int], n: int | None) -> list[int]:
    """At most n snapshot iterations, evenly spread, always keeping the first and the last."""
    if not n or len(iterations) <= n:
        return iterations
    idx = np.unique(np.round(np.linspace(0, len(iterations) - 1, n)).astype(int))
    return [iterations[i] for i in idx]


def analyze_run(run_dir: Path, prm: dict, max_snapshots: int | None = None, iterations: list[int] | None = None,
                force: bool = False, log=None) -> dict[int, dict]:
    """Analyze the run's snapshots (all, `max_snapshots` of them, or the given `iterations`); one cache file per
    snapshot, so several processes can share a run. A snapshot cached with the same parameters is not redone."""
    cfg = load_run_config(run_dir / "config.yaml")
    if cfg.algorithm not in METHODS:
        raise ValueError(f"{run_dir}: algorithm {cfg.algorithm!r} has no value estimate (only {METHODS})")
    snaps = snapshots(run_dir)
    todo = pick(sorted(snaps), max_snapshots) if iterations is None else iterations
    missing = sorted(set(todo) - set(snaps))
    if missing:
        raise ValueError(f"{run_dir}: no snapshot at iteration(s) {missing}; snapshots: {sorted(snaps)}")
    log = log or (lambda msg: print(msg, flush=True))
    cache = load_cache(run_dir)
    for it in todo:
        if it in cache and cache[it]["params"] == prm and not force:
            continue
        res = {"params": prm, "algorithm": cfg.algorithm, "label": cfg.label, "seed": cfg.seed,
               "K": cfg.algo.get("K"), "total_iterations": cfg.train.iterations,
               **analyze_snapshot(load_snapshot(run_dir, snaps[it]), it, prm)}
        atomic_write(cache_path(run_dir, it), json.dumps(res))
        cache[it] = res
        log(f"[analyze] {run_dir.name} it {it}: MAE {res['mae']:.3f} on {res['n_states']} states, top-1 "
            f"{res['top1'] if res['top1'] is not None else float('nan'):.2f} on {res['n_ranking_states']} ranking "
            f"states (random {res['top1_random'] or float('nan'):.2f}) [{res['seconds']}s]")
    return cache


def run_dirs(paths: list[str]) -> list[Path]:
    """Run directories given directly, or every PPO / VinePPO run with snapshots in a sweep directory."""
    out = []
    for p in map(Path, paths):
        if (p / "config.yaml").exists():
            out.append(p)
        elif p.is_dir():
            for d in sorted(x for x in p.iterdir() if (x / "config.yaml").exists()):
                try:
                    if load_run_config(d / "config.yaml").algorithm in METHODS:
                        out.append(d)
                except Exception as e:             # a broken run must not stop the analysis of the others
                    print(f"[analyze] skipping {d}: {e}", file=sys.stderr)
        else:
            raise FileNotFoundError(f"{p}: not a run or sweep directory")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("values", help="value-prediction analysis of PPO / VinePPO weight snapshots")
    v.add_argument("paths", nargs="+", help="run directories, or a sweep's results directory")
    v.add_argument("--split", default=DEFAULTS["split"], help="held-out split the responses come from")
    helps = {"problems": "the first N problems of the split", "samples": "held-out responses per problem",
             "gt_rollouts": "MC rollouts per state for the ground truth (paper: 256)",
             "ranking_states": "states at which alternative next steps are ranked",
             "alternatives": "distinct next steps ranked per state", "min_alternatives": "fewer: state skipped",
             "draws": "continuations sampled per ranking state to find the alternatives"}
    for k, h in helps.items():
        v.add_argument("--" + k.replace("_", "-"), type=int, default=DEFAULTS[k], help=f"{h} (default {DEFAULTS[k]})")
    v.add_argument("--max-snapshots", type=int, default=None, help="analyze at most N snapshots per run (evenly "
                                                                   "spread, first and last kept)")
    v.add_argument("--iterations", default=None, help="comma-separated snapshot iterations to analyze (default: all)")
    v.add_argument("--threads", type=int, default=1, help="torch threads")
    v.add_argument("--force", action="store_true", help="recompute even what is cached")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    prm = {k: getattr(a, k) for k in DEFAULTS}
    bad = [k for k in DEFAULTS if k != "split" and prm[k] < 1]
    if bad or prm["min_alternatives"] > prm["alternatives"]:
        print(f"error: --{(bad or ['min_alternatives'])[0].replace('_', '-')} must be >= 1 and "
              f"--min-alternatives <= --alternatives", file=sys.stderr)
        return 2
    try:
        dirs = run_dirs(a.paths)
        if not dirs:
            print(f"error: no PPO / VinePPO run in {a.paths}", file=sys.stderr)
            return 2
        its = [int(x) for x in a.iterations.split(",")] if a.iterations else None
        for d in dirs:
            analyze_run(d, prm, a.max_snapshots, its, a.force)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
