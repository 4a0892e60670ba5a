"""experiments/table1.yaml and k_ablation.yaml resolve (offline, nothing loaded) to the paper's hyperparameters;
the paper's numbers live in harness/reporting/paper_results.yaml and reach table.md and the report."""
import json
from pathlib import Path

import pytest
import yaml

from harness.config import load_sweep
from harness.reporting import paper
from harness.reporting.paper import numbers as paper_results, setting as paper_setting
from harness.reporting.runs import load
from harness.reporting.table import table

ROOT = Path(__file__).parents[1]
# The authors' configs (shared/reference/paper.md §1-3, vineppo_code.md §6)
PAPER = {"sampling": {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 1024},
         "eval": {"samples": 16, "temperature": 0.35, "top_p": 0.9},
         "rl_train": {"prompts_per_iteration": 64, "samples_per_prompt": 8, "epochs": 2, "batch_size": 64,
                      "lr": 1e-6, "clip_eps": 0.2, "kl_coef": 1e-4, "warmup_ratio": 0.03, "grad_clip": 1.0},
         "iterations": {"math": 1000, "gsm8k": 650}, "K": 9,
         # the authors' max_step_for_value_estimation (GSM8K 25: s_0 .. s_25 estimated) is max_states + 1 here
         "max_states": {"gsm8k": 25 + 1, "math": None}, "mc_context": {"rho": 2047, "ds": 2499},
         "dpo_beta": {"math": 0.1, "gsm8k": 0.3},
         "models": {("rho", "gsm8k"): "realtreetune/rho-1b-sft-GSM8K", ("rho", "math"): "realtreetune/rho-1b-sft-MATH",
                    ("ds", "gsm8k"): "realtreetune/deepseekmath-7b-sft-GSM8K",
                    ("ds", "math"): "realtreetune/deepseekmath-7b-sft-MATH-v2"}}


def test_table1_matches_the_paper():
    _, runs = load_sweep(ROOT / "experiments" / "table1.yaml")
    assert len(runs) == 4 * (1 + 6 * 3)
    seen = set()
    for r in runs:
        c = r.cfg
        task = c.task["name"]
        fam = r.id.split("-")[0]
        seen.add((fam, task, c.algorithm))
        assert c.model.hub == PAPER["models"][(fam, task)]
        assert c.sampling.model_dump() == PAPER["sampling"]
        assert {k: getattr(c.eval, k) for k in PAPER["eval"]} == PAPER["eval"]
        assert c.resources.gpus >= 1 and c.resources.time_min > 0 and c.resources.mem_gb > 0
        if c.algorithm in ("ppo", "vineppo", "grpo", "rloo"):
            assert {k: getattr(c.train, k) for k in PAPER["rl_train"]} == PAPER["rl_train"]
            assert c.train.iterations == PAPER["iterations"][task]
            assert c.train.batch_size // c.train.micro_batch_size * c.train.micro_batch_size == 64
        if c.algorithm == "vineppo":
            assert c.algo["K"] == PAPER["K"] and c.algo.get("max_states") == PAPER["max_states"][task]
            assert c.algo["mc_context"] == PAPER["mc_context"][fam]
        if c.algorithm in ("ppo", "vineppo"):
            assert c.train.whiten_scope == "minibatch"         # the authors' statistics: one 64-row optimizer step
        if task == "math":
            assert c.task["splitter"] == "authors"
        if c.algorithm == "ppo":
            assert (c.algo["gamma"], c.algo["lam"], c.algo["value_clip"]) == (1.0, 1.0, 0.2)
        if c.algorithm == "dpo":
            assert c.algo["beta"] == PAPER["dpo_beta"][task] and c.algo["dpop_lambda"] == 50.0
            assert c.train.samples_per_prompt == 64 and c.train.epochs == 3 and c.train.lr == 1e-6
        if c.algorithm == "restem":
            assert (c.train.iterations, c.train.samples_per_prompt, c.train.epochs) == (10, 8, 8)
            assert c.algo["max_per_problem"] == 10 and c.algo["select"]
        if c.algorithm == "sft":
            assert c.train.iterations == 0                          # the authors' checkpoint, evaluated
    assert len(seen) == 4 * 7


@pytest.mark.parametrize("name", ["table1", "k_ablation"])
def test_paper_sweeps_train_in_bf16_with_fp32_master_weights(name):
    """The authors trained with DeepSpeed bf16 (bf16 weights, fp32 master copy): every run that takes optimizer
    steps does the same, or holds fp32 weights under bf16 autocast (RestEM's torch backend has no master copy)."""
    _, runs = load_sweep(ROOT / "experiments" / f"{name}.yaml")
    trained = [r.cfg for r in runs if r.cfg.train.iterations > 0]
    assert trained
    for c in trained:
        assert c.train.precision == "bf16" and not c.train.allow_low_precision_weights, c
        if c.backend.name == "deepspeed":
            assert c.backend.bf16_weights and c.model.dtype == "bfloat16", c
        else:
            assert c.algorithm == "restem" and c.model.dtype == "float32", c


def test_k_ablation_matches_the_paper():
    _, runs = load_sweep(ROOT / "experiments" / "k_ablation.yaml")
    ks = sorted({r.cfg.algo["K"] for r in runs if r.cfg.algorithm == "vineppo"})
    assert ks == sorted(paper_results()["k_ablation"]["vineppo"]) == [1, 3, 9]
    for r in runs:
        assert r.cfg.task["name"] == "math" and r.cfg.model.hub == "realtreetune/rho-1b-sft-MATH"
        assert r.cfg.task["splitter"] == "authors"
        if r.cfg.algorithm == "vineppo":
            assert r.cfg.train.iterations == 1000 and r.cfg.sampling.temperature == 0.6
            assert r.cfg.algo["mc_context"] == 2047 and r.cfg.train.whiten_scope == "minibatch"
            assert r.cfg.algo.get("max_states") is None


def test_paper_results_file():
    p = paper_results()
    assert p["table1"]["rho-1.1b"]["math"]["vineppo"] == 23.0 and p["table1"]["deepseekmath-7b"]["gsm8k"]["ppo"] == 78.9
    assert paper.k_ablation()["vineppo"][3] == 21.3 and paper.numbers()["values"]["mae"]["ppo"] == 0.11
    assert paper_setting({"model": {"hub": "realtreetune/rho-1b-sft-MATH"}, "task": {"name": "math"}}) == "rho-1.1b math"
    assert paper_setting({"model": {}, "task": {"name": "arithmetic"}}) is None


def _fake_run(root: Path, name: str, algorithm: str, hub: str | None, task: str, acc: float, extra=None):
    d = root / name
    d.mkdir(parents=True)
    cfg = {"algorithm": algorithm, "label": algorithm, "group": "g", "seed": 0, "task": {"name": task},
           "model": {"hub": hub}, "train": {"iterations": 2}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"kind": "eval", "iteration": 2, "split": "test", "acc": acc, "grad_steps": 4, "wall_s": 1.0}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "status.json").write_text(json.dumps({"state": "done"}))
    for f, v in (extra or {}).items():
        (d / f).write_text(json.dumps(v))


def test_table_has_paper_column_per_setting(tmp_path):
    _fake_run(tmp_path, "a", "vineppo", "realtreetune/rho-1b-sft-MATH", "math", 0.2, {"lm_eval.json": {"acc": 0.19}})
    _fake_run(tmp_path, "b", "ppo", "realtreetune/rho-1b-sft-MATH", "math", 0.17)
    _fake_run(tmp_path, "c", "ppo", "realtreetune/deepseekmath-7b-sft-GSM8K", "gsm8k", 0.7)
    md = table(load(tmp_path))
    assert "### rho-1.1b math" in md and "### deepseekmath-7b gsm8k" in md
    assert "| 23.0 |" in md and "| 18.1 |" in md and "| 78.9 |" in md and "lm-eval test" in md
    # a sweep outside the paper's settings keeps the plain table
    other = tmp_path / "other"
    _fake_run(other, "x", "ppo", None, "arithmetic", 0.5)
    assert "paper" not in table(load(other)) and "###" not in table(load(other))


@pytest.mark.parametrize("name", ["table1", "k_ablation", "smol_gsm8k"])
def test_dry_run_offline(name, tmp_path):
    """--dry-run validates every run without touching the hub or the data."""
    import os
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "harness.sweep", str(ROOT / "experiments" / f"{name}.yaml"), "--dry-run",
                        "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "dry run, nothing written" in r.stdout and not (tmp_path / "out").exists()
