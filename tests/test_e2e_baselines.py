"""End to end with all seven methods: one sweep (SFT -> RestEM, DPO+, PPO, VinePPO, GRPO, RLOO) + plot, and exact
resume of the two offline methods after a SIGKILL. A small modulus and clean demonstrations make the 300-step SFT
model right often enough (~20% at T = 1) that DPO finds pairs and RestEM keeps solutions."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.core.metrics import read_jsonl

from helpers import MINI_MODEL, env, sh, strip_timing

MINI7 = """
name: mini7
workers: 2
defaults:
  task: {name: arithmetic, n_train: 200, n_validation: 8, n_test: 8, min_ops: 1, max_ops: 2, modulus: 4, noise: 0.0}
""" + MINI_MODEL + """  train: {prompts_per_iteration: 4, samples_per_prompt: 4, epochs: 1, batch_size: 8, micro_batch_size: 4,
          lr: 1.0e-4, checkpoint_every: 1}
  eval: {every: 2, samples: 2, temperature: 1.0, top_p: 1.0}
  progress: false
groups:
  - name: sft
    set: {algorithm: sft, train: {iterations: 300, lr: 3.0e-3, batch_size: 32, micro_batch_size: 32}, eval.every: 0}
  - name: rl
    init_from: sft
    variants:
      - {algorithm: restem, train: {iterations: 2, prompts_per_iteration: 8, samples_per_prompt: 8, epochs: 2},
         eval.every: 1}
      - {algorithm: dpo, train: {iterations: 3, prompts_per_iteration: 8, samples_per_prompt: 8, epochs: 2},
         eval.every: 1}
      - {algorithm: ppo, train.iterations: 2}
      - {algorithm: vineppo, train.iterations: 2, algo: {K: 2}}
      - {algorithm: grpo, train.iterations: 2}
      - {algorithm: rloo, train.iterations: 2}
"""
COLUMNS = {"grad_steps", "wall_s", "tokens_generated", "tokens_trained", "flops", "device_s", "t_generate",
           "t_train", "train_reward"}



@pytest.mark.slow
def test_seven_methods_sweep_and_plot(tmp_path):
    (tmp_path / "mini7.yaml").write_text(textwrap.dedent(MINI7))
    r = sh("harness.sweep", "mini7.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "results" / "mini7"
    runs = {p.name.split("-")[1]: p for p in out.iterdir() if (p / "config.yaml").exists()}
    assert sorted(runs) == sorted(["s0", "restem", "dpo", "ppo", "vineppo", "grpo", "rloo"])   # sft-s0-<hash>
    for name in ("dpo", "restem"):
        rows = read_jsonl(runs[name] / "metrics.jsonl")
        train = [x for x in rows if x["kind"] == "train"]
        assert all(COLUMNS <= set(x) for x in train[:1]) and all(
            {"grad_steps", "wall_s", "tokens_generated", "flops"} <= set(x) for x in rows)
        last = train[-1]
        assert last["grad_steps"] > 0 and last["tokens_generated"] > 0 and last["flops"] > 0 and last["wall_s"] > 0
        assert [x["grad_steps"] for x in train] == sorted(x["grad_steps"] for x in train)      # cumulative
    dpo = [x for x in read_jsonl(runs["dpo"] / "metrics.jsonl") if x["kind"] == "train"]
    assert dpo[0]["pairs"] > 0 and dpo[-1]["grad_steps"] == dpo[0]["total_steps"] == 2 * -(-dpo[0]["pairs"] // 8)
    assert dpo[0]["t_generate"] > 0 and all(x["tokens_generated"] == dpo[0]["tokens_generated"] for x in dpo)
    restem = [x for x in read_jsonl(runs["restem"] / "metrics.jsonl") if x["kind"] == "train"]
    assert all(x["kept"] > 0 and x["t_select"] > 0 for x in restem)
    # its fine-tune's health columns (its trainer is gone by the time the run loop looks for one)
    assert all(x["policy_changed"] > 0.5 and x["policy_update_rel"] > 0 for x in restem), restem
    # selection evaluations are training cost: more tokens than the iteration's own sampling produced
    assert restem[0]["tokens_generated"] > 8 * 8 * restem[0]["response_len"] * 1.2

    r = sh("harness.plot", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    table = (out / "table.md").read_text()
    pos = [table.index(f"| {m} |") for m in ("SFT", "RestEM", "DPO+", "PPO", "VinePPO", "GRPO", "RLOO")]
    assert pos == sorted(pos), table
    for f in ("accuracy_vs_iteration.png", "accuracy_vs_wallclock.png", "accuracy_vs_compute.png"):
        assert (out / f).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("name,iterations,kill_after", [("dpo", 4, 2), ("restem", 3, 1)])
def test_offline_method_killed_and_resumed_writes_identical_metrics(name, iterations, kill_after, tmp_path):
    from harness.config import dump_yaml, load_sweep
    from harness.train.job import execute
    (tmp_path / "mini7.yaml").write_text(textwrap.dedent(MINI7))
    _, runs = load_sweep(tmp_path / "mini7.yaml")
    sft = runs[0]
    run = next(r for r in runs if r.cfg.algorithm == name)
    run.cfg.train.iterations = iterations
    for d in ("a", "b"):
        for r in (sft, run):
            (tmp_path / d / r.id).mkdir(parents=True)
            (tmp_path / d / r.id / "config.yaml").write_text(dump_yaml(r.cfg))
        execute(tmp_path / d / sft.id, threads=1)
    execute(tmp_path / "a" / run.id, threads=1)                          # uninterrupted
    b = tmp_path / "b" / run.id
    p = subprocess.Popen([sys.executable, "-m", "harness.run", str(b), "--threads", "1"], env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:                                        # kill -9 once `kill_after` is checkpointed
        st = json.loads((b / "status.json").read_text()) if (b / "status.json").exists() else {}
        if st.get("iteration", 0) >= kill_after:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert json.loads((b / "status.json").read_text())["state"] == "running"
    execute(b, threads=1)
    ra, rb = read_jsonl(tmp_path / "a" / run.id / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(ra) == len(rb) and strip_timing(ra) == strip_timing(rb)
    assert [x["grad_steps"] for x in ra if x["kind"] == "train"][-1] > 0
