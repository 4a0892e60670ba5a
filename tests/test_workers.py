"""The local executor's long-lived workers: a run trained after others in one process is the run a fresh process
trains, each run has its own log, and a worker that dies fails only its run."""
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.core.metrics import read_json, read_jsonl
from helpers import env, sh, strip_timing

SWEEP = """
name: workers
workers: 1
defaults:
  task: {name: arithmetic, n_train: 64, n_validation: 8, n_test: 8, min_ops: 2, max_ops: 3}
  model: {hidden_size: 32, layers: 1, heads: 4, intermediate_size: 64}
  sampling: {max_new_tokens: 24}
  train: {batch_size: 8, micro_batch_size: 8, prompts_per_iteration: 4, samples_per_prompt: 2, checkpoint_every: 2}
  eval: {every: 0, at_start: false, samples: 2, greedy: true, max_problems: 8, final_splits: [validation]}
  progress: false
groups:
  - {name: sft, set: {algorithm: sft, train: {iterations: 30, lr: 3.0e-3}}}
  - name: rl
    init_from: sft
    variants:
      - {algorithm: ppo, train.iterations: 3}
      - {algorithm: grpo, train.iterations: 3}
"""


def test_runs_served_one_after_another_equal_fresh_processes(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP)
    r = sh("harness.sweep", "s.yaml", "--output", "out", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    jobs = {d.name: read_json(d / "job.json") for d in out.glob("*-s0-*")}
    assert len({j["job_id"].split(".")[0] for j in jobs.values()}) == 1, jobs   # one worker served all three
    assert sorted(j["job_id"].split(".")[1] for j in jobs.values()) == ["1", "2", "3"], jobs
    for name, j in jobs.items():                                               # each run has its own log
        assert j["log"].endswith(f"{name}.log") and os.path.isabs(j["log"])
        text = open(j["log"]).read()
        assert f"[{name}] eval it" in text and not any(f"[{o}]" in text for o in jobs if o != name), text[-500:]
    for name in ("ppo", "grpo"):                                               # the same rows in a fresh process
        served = next(out.glob(f"rl-{name}-s0-*"))
        fresh = out / f"fresh-{name}"
        fresh.mkdir()
        (fresh / "config.yaml").write_text((served / "config.yaml").read_text())
        p = subprocess.run([sys.executable, "-m", "harness.run", str(fresh), "--threads", "1"], env=env(),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        a, b = (strip_timing(read_jsonl(d / "metrics.jsonl")) for d in (served, fresh))
        assert a == b and all(row["tokens_generated"] for row in a), (a, b)
        assert name != "ppo" or any(row.get("value_loss") for row in a), a                # it trained


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_that_run_and_the_next_run_still_trains(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP.replace("iterations: 30", "iterations: 400")
                                     .replace("name: sft, set:", "name: sft, seeds: [0, 1], set:")
                                     .split("  - name: rl")[0])
    p = subprocess.Popen([sys.executable, "-m", "harness.sweep", "s.yaml", "--output", "out"], cwd=tmp_path,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, first = time.time() + 120, None
    while time.time() < deadline:
        started = [d for d in (tmp_path / "out").glob("sft-*") if (read_json(d / "status.json", {}) or {})
                   .get("iteration", 0) >= 2]
        if started:
            first = started[0]
            break
        time.sleep(0.1)
    assert first is not None
    os.kill(read_json(first / "status.json")["pid"], signal.SIGKILL)           # an OOM killer, say
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 1, out
    assert f"failed   {first.name}" in out and "died mid-run (exit code -9" in out, out
    other = next(d for d in (tmp_path / "out").glob("sft-*") if d != first)
    assert read_json(other / "status.json")["state"] == "done", out
    assert read_json(first / "status.json")["state"] == "failed"
