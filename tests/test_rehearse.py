"""`python -m harness.sweep FILE --rehearse [--stand-in tiny]`: which runs stand for which, and a real rehearsal
(both phases, the resume, the health checks, the time projection, a failure made loud). CI rehearses
experiments/table1.yaml and k_ablation.yaml themselves (`make rehearse`, vLLM + DeepSpeed on 2 processes)."""
import textwrap
from collections import Counter

import pytest

from harness.config import load_sweep
from harness.launch.rehearse import path_key, plan

from helpers import ROOT, sh


def test_table1_rehearses_every_distinct_path_once():
    _, runs = load_sweep(ROOT / "experiments" / "table1.yaml")
    chosen = plan(runs)
    covered = Counter(x for _, covers in chosen for x in covers)
    assert set(covered) == {r.id for r in runs} and set(covered.values()) == {1}     # every run, once
    keys = {path_key(r.cfg) for r, _ in chosen}
    assert len(keys) == len(chosen) == 24
    reps = {(r.cfg.algorithm, r.cfg.task["name"], r.cfg.backend.zero_stage) for r, _ in chosen}
    # 7 methods x 2 tasks on the 1.1B (ZeRO-0, RestEM on torch), plus the 7B's ZeRO-2 paths of the 5 DeepSpeed methods
    assert len(reps) == 24 and all((a, t, 2) in reps for a in ("vineppo", "ppo", "grpo", "rloo", "dpo")
                                   for t in ("gsm8k", "math"))
    by_id = {r.id: r.cfg for r in runs}
    for r, covers in chosen:                      # seeds and numeric values do not make a path; the seeds share one
        assert all((by_id[x].algorithm, by_id[x].task["name"]) == (r.cfg.algorithm, r.cfg.task["name"]) for x in covers)
        assert len(covers) == (6 if r.cfg.algorithm == "restem" else 2 if r.cfg.algorithm == "sft" else 3)


SWEEP = """
name: reh
workers: 1
defaults:
  task: {name: arithmetic}
  model: {heads: 4}
  train: {iterations: 400, precision: fp32, prompts_per_iteration: 16, samples_per_prompt: 8, batch_size: 64, micro_batch_size: 64,
          lr: 1.0e-4, schedule: constant, warmup_ratio: 0.0}
  eval: {every: 50, samples: 2, max_problems: 64}
  sampling: {max_new_tokens: 64}
  resources: {time_min: 1}
  progress: false
groups:
  - name: sft
    set: {algorithm: sft, train.iterations: 20, train.lr: 1.0e-3}
  - name: rl
    init_from: sft
    require: {split: validation, acc_greedy: 0.95}
    seeds: [0, 1]
    grid: {train.lr: [1.0e-4, 3.0e-4]}
    variants:
      - {algorithm: grpo}
  - name: real
    set: {algorithm: dpo, task: {name: gsm8k}, model: {hub: realtreetune/rho-1b-sft-GSM8K, dtype: bfloat16},
          backend: {name: deepspeed, bf16_weights: true}, train: {iterations: 4, samples_per_prompt: 64}}
  - name: broken
    set: {algorithm: sft, train: {lr: 1.0e-13, precision: bf16}}
"""


@pytest.mark.slow
def test_a_rehearsal_runs_each_path_twice_and_says_what_failed(tmp_path):
    (tmp_path / "reh.yaml").write_text(textwrap.dedent(SWEEP))
    r = sh("harness.sweep", "reh.yaml", "--rehearse", "--stand-in", "tiny", cwd=tmp_path, timeout=900)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr[-3000:]                # the broken run fails the rehearsal
    assert "7 runs, 4 distinct code paths" in out
    assert "stands for 4 runs" in out                              # 2 seeds x 2 learning rates of GRPO
    # the 400-iteration GRPO asks for 1 minute: projected from its measured iterations, that is too short
    assert "WARNING: resources.time_min 1 looks too short for 400 iterations" in out
    assert "stand-in for gsm8k (bfloat16)" in out and "(stand-in: not a GPU estimate)" in out
    assert out.count("    ok in") == 3
    # lr 1e-13 rounds away: the run's own Stuck check stops it after its first step, and the rehearsal says so
    assert "FAILED: state failed: harness.runtime.backends.Stuck: iteration 1: after 1 optimizer steps with a gradient" in out
    assert "3 of 4 paths ok" in out
    reh = tmp_path / "results" / "reh-rehearsal"
    assert not (tmp_path / "results" / "reh").exists()            # the sweep's own results are not touched
    assert (reh / "table.md").exists()
    for name in [p.name for p in reh.iterdir() if p.name.startswith(("rl-", "real-"))]:
        assert "resumed at iteration 1" in (reh / "logs" / f"{name}.log").read_text()
