"""harness.reporting.plot --report from a minimal hand-written results directory: every figure and section, computed readings,
broken runs skipped with a warning; and the weight snapshots of `train.keep_every` on a real (tiny) run."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.reporting import plot
from harness.analysis.values import snapshots
from harness.reporting.runs import load_cache

ROOT = Path(__file__).parents[1]
FIGS = ["accuracy_vs_iteration.png", "value_mae.png", "value_calibration.png", "value_ranking.png",
        "kl_frontier.png", "train_vs_test.png", "k_ablation.png"]


def write_run(root: Path, name: str, algorithm: str, seed: int, accs: list[float], K: int | None = None,
              kls=None, train=None, values=None, label=None):
    d = root / name
    d.mkdir(parents=True)
    n = 10 * (len(accs) - 1)
    cfg = {"algorithm": algorithm, "label": label or algorithm, "group": "rl", "seed": seed,
           "train": {"iterations": n, "prompts_per_iteration": 16, "samples_per_prompt": 8},
           "algo": {"K": K} if K else {}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for i, acc in enumerate(accs):
        it = 10 * i
        if it:
            for j in range(it - 9, it + 1):
                rows.append({"kind": "train", "iteration": j, "wall_s": 2.0 * j * (K or 1), "kl": kls[i],
                             "train_reward": train[i], "t_mc_rollouts": 1.0 * (K or 0), "mc_rollouts": 100 * (K or 0),
                             "grad_steps": 2 * j, "flops": 1e9 * j, "tokens_generated": 1000 * j * (K or 1)})
        for split in (["validation", "test"] if it == n else ["validation"]):
            rows.append({"kind": "eval", "iteration": it, "split": split, "acc": acc, "acc_greedy": 0.9,
                         "wall_s": 2.0 * it * (K or 1), "grad_steps": 2 * it, "flops": 1e9 * it + 1,
                         "n_problems": 100, "samples": 2})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "status.json").write_text(json.dumps({"state": "done"}))
    for it, (gt, pred, top, rnd) in (values or {}).items():
        res = {"params": {"gt_rollouts": 64}, "algorithm": algorithm, "label": algorithm, "seed": seed, "K": K,
               "total_iterations": n, "iteration": it, "gt": gt, "pred": pred, "step": list(range(len(gt))),
               "mae": float(np.abs(np.subtract(pred, gt)).mean()), "n_states": len(gt), "ranking": [],
               "top1": top, "top1_random": rnd, "n_ranking_states": 2}
        p = d / "analysis" / "values" / f"iter_{it:06d}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res))
    return d


@pytest.fixture()
def results(tmp_path):
    r = tmp_path / "sweep"
    write_run(r, "sft-s0", "sft", 0, [0.3])
    gt = [0.2, 0.5, 1.0, 0.0]
    for s in (0, 1):
        write_run(r, f"rl-ppo-s{s}", "ppo", s, [0.3, 0.4, 0.5], kls=[0, 0.1, 0.3], train=[None, 0.4, 0.6],
                  values={0: (gt, [0.6, 0.6, 0.6, 0.6], 0.2, 0.2), 20: (gt, [0.4, 0.5, 0.8, 0.2 + 0.1 * s], 0.5, 0.25)})
        write_run(r, f"rl-vineppo-s{s}", "vineppo", s, [0.3, 0.5, 0.6], K=3, kls=[0, 0.05, 0.1],
                  train=[None, 0.45, 0.6], values={0: (gt, gt, 1.0, 0.2), 20: (gt, [0.2, 0.5, 1.0, 0.2 * s], 1.0, 0.2)})
        write_run(r, f"k-vineppo-K9-s{s}", "vineppo", s, [0.3, 0.55, 0.65], K=9, kls=[0, 0.05, 0.1],
                  train=[None, 0.5, 0.7], label="vineppo-K9")
    d = write_run(r, "rl-dpo-s0", "dpo", 0, [0.3, 0.35, 0.4], kls=[0, 0, 0], train=[None, 0.3, 0.3])
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    for x in rows:                    # DPO+ rows: no KL; a training accuracy only where it samples (iteration 1)
        x.pop("kl", None)
        if x["kind"] == "train" and x["iteration"] > 1:
            x.pop("train_reward")
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (r / "rl-broken").mkdir()
    (r / "rl-broken" / "config.yaml").write_text("")               # an empty config: skipped, not fatal
    (r / "rl-empty").mkdir()
    (r / "rl-empty" / "config.yaml").write_text(yaml.safe_dump({"algorithm": "ppo"}))   # no metrics yet
    return r


def test_report_from_minimal_results(results):
    with pytest.warns(UserWarning, match="skipping .*rl-broken"):
        assert plot.main([str(results), "--report"]) == 0
    for f in FIGS:
        assert (results / f).stat().st_size > 1000, f
    md = (results / "report.md").read_text()
    for f in FIGS:
        assert f"]({f})" in md, f
    assert "nan" not in md.split("## KL")[1].split("## Paper")[0]       # methods without a KL are left out
    assert "- DPO+: one training accuracy only, no slope" in md          # rows without training accuracy skipped
    # MAE per seed over snapshots > 0: PPO seeds 0.15 and 0.175, VinePPO 0 and 0.05 -> ratio 0.025 / 0.1625
    assert "| PPO | 2 | 0.162 ± 0.018 |" in md and "| VinePPO | 2 | 0.025 ± 0.035 |" in md
    assert "VinePPO's error is 0.15x PPO's" in md
    assert "top-1 1.00 (VinePPO) vs 0.50 (PPO)" in md
    # E|Bin(3, v)/3 - v| at the GT values 0.2, 0.5, 1, 0: (0.2048 + 0.25 + 0 + 0) / 4
    assert "alone (an unbiased estimate): 0.114, measured 0.025." in md
    assert "| PPO | 0.200 | 0.000 | 0.200 | 0.250 |" in md and "| VinePPO | 0.000 | 0.000 | 0.000 | 0.100 |" in md
    # KL frontier at the smallest final KL (0.1): PPO interpolates 0.3 + 0.1 / 0.1 * ... = 0.4; VinePPO 0.6
    assert "- PPO: final KL 0.300 at validation accuracy 0.500; at KL 0.100" in md and "0.400." in md
    # K ablation: K=3 (2 runs) and K=9 (2 runs), time per iteration 2*K s
    assert "| 3 | 2 | 0.600 ± 0.000 | 6.0 ± 0.0 |" in md and "| 9 | 2 | 0.650 ± 0.000 | 18.0 ± 0.0 |" in md
    assert "## Paper vs ours" in md and "0.11 / 0.03" in md


def test_report_without_analysis_says_how_to_get_it(results):
    for d in results.iterdir():
        for p in (d / "analysis" / "values").glob("*.json"):
            p.write_text("{not json")                             # a torn cache file is ignored
    assert load_cache(results / "rl-ppo-s0") == {}
    assert plot.main([str(results), "--report"]) == 0
    assert "python -m harness.analyze values" in (results / "report.md").read_text()


def test_plot_cli_reports_empty_directory(tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness.plot", str(tmp_path), "--report"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "no run" in r.stderr


@pytest.mark.slow
def test_keep_every_snapshots_and_analysis_cli(tmp_path):
    """A real SFT -> PPO run with keep_every writes iter_*.pt (policy + critic); the analysis CLI reads them (and
    the run's start and final weights), caches one file per snapshot, and does not recompute a cached one."""
    from harness.config import dump_yaml, load_sweep
    from harness.train.job import execute
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "s", "defaults": {
            "task": {"name": "arithmetic", "n_train": 50, "n_validation": 4, "n_test": 4, "min_ops": 2, "max_ops": 2},
            "model": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 20},
            "train": {"prompts_per_iteration": 2, "samples_per_prompt": 2, "batch_size": 4, "epochs": 1},
            "eval": {"every": 0, "samples": 1, "greedy": False}, "progress": False},
        "groups": [{"name": "sft", "set": {"algorithm": "sft", "train.iterations": 5}},
                   {"name": "rl", "init_from": "sft", "set": {"algorithm": "ppo", "train.iterations": 3,
                                                               "train.keep_every": 2}}]}))
    _, runs = load_sweep(sweep)
    for r in runs:
        (tmp_path / r.id).mkdir()
        (tmp_path / r.id / "config.yaml").write_text(dump_yaml(r.cfg))
        execute(tmp_path / r.id, threads=1)
    ppo = tmp_path / runs[1].id
    files = sorted(p.name for p in (ppo / "checkpoints").glob("iter_*.pt"))
    assert files == ["iter_000000.pt", "iter_000002.pt", "iter_000003.pt"]      # 0, every 2, and the last
    snap = torch.load(ppo / "checkpoints" / "iter_000003.pt", weights_only=False)
    tag = torch.load(ppo / "checkpoints" / "latest.pt", weights_only=False)["loop"]["tag"]
    latest = torch.load(ppo / "checkpoints" / tag / "critic" / "state.pt", weights_only=False)["model"]
    assert snap["iteration"] == 3 and set(snap) >= {"policy", "critic"}
    assert all(torch.equal(snap["critic"][k], latest[k]) for k in latest)
    assert sorted(snapshots(ppo)) == [0, 2, 3]
    assert not list((tmp_path / runs[0].id / "checkpoints").glob("iter_*"))       # keep_every 0: none
    args = [sys.executable, "-m", "harness.analyze", "values", str(tmp_path), "--problems", "2", "--gt-rollouts",
            "4", "--ranking-states", "2", "--draws", "4"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cache = load_cache(ppo)
    assert sorted(cache) == [0, 2, 3] and all(c["params"]["gt_rollouts"] == 4 for c in cache.values())
    assert r.stdout.count("[analyze]") == 3
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)          # cached: nothing recomputed
    assert r.returncode == 0 and "[analyze]" not in r.stdout
    r = subprocess.run(args[:4] + [str(ppo), "--iterations", "7"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "no snapshot at iteration(s) [7]" in r.stderr


def test_table_marks_no_learning_and_compares_equal_budgets(results):
    write_run(results, "rl-grpo-s0", "grpo", 0, [0.3, 0.3, 0.31], kls=[0, 0.1, 0.1], train=[None, 0.3, 0.3])  # +0.01
    assert plot.main([str(results)]) == 0
    md = (results / "table.md").read_text()
    # the start: 0.3 on 100 problems x 2 samples -> 2 sigma = 2 sqrt(0.21 / 200) = 0.065
    assert "| PPO | 0.500 ± 0.000 | +0.200 |" in md and "| DPO+ | 0.400  | +0.100 |" in md
    assert "| GRPO | 0.310  | +0.010 *within noise* |" in md
    # equal budgets: every PPO-family run reached 20 iterations = 2560 episodes; the shortest run (PPO, 2 s per
    # iteration) trained 40 s, where VinePPO K=3 (6 s per iteration) reads 0.3 + 0.2 * 40 / 60
    assert "at iteration 20 (equal iterations) | at 2560 episodes (equal episodes) | at 40 s (equal wall-clock)" in md
    assert "| PPO | 2 | 0.500 | 0.500 | 0.500 | 20 |" in md
    assert "| VinePPO | 2 | 0.600 | 0.600 | 0.433 | 7 |" in md
    assert "| GRPO | 1 | 0.310 | 0.310 | 0.310 | 20 |" in md
    assert "DPO+ |" not in md.split("At equal budgets")[1]                # offline methods are not in it
