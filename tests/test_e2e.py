"""End to end on a minimal config: sweep (SFT -> PPO, VinePPO) + plot, re-run is a no-op, resume is exact."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.core.metrics import read_jsonl

from helpers import MINI, env, sh, strip_timing



@pytest.mark.slow
def test_sweep_plot_and_rerun(tmp_path):
    (tmp_path / "mini.yaml").write_text(textwrap.dedent(MINI))
    r = sh("harness.sweep", "mini.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "results" / "mini"
    runs = sorted(p for p in out.iterdir() if (p / "config.yaml").exists())
    assert len(runs) == 5
    for run in runs:
        assert json.loads((run / "status.json").read_text())["state"] == "done"
        assert (run / "final" / "config.json").exists() and (run / "checkpoints" / "latest.pt").exists()
        rows = read_jsonl(run / "metrics.jsonl")
        train = [x for x in rows if x["kind"] == "train"]
        assert [x["iteration"] for x in train] == list(range(1, len(train) + 1))
        for x in train:
            assert {"grad_steps", "wall_s", "t_generate", "t_mc_rollouts", "t_train", "tokens_generated",
                    "tokens_trained", "flops", "device_s"} <= set(x)
        assert x["flops"] > 0 and x["grad_steps"] > 0
        evals = [x for x in rows if x["kind"] == "eval"]
        assert {x["split"] for x in evals if x["iteration"] == train[-1]["iteration"]} == {"validation", "test"}
    sft = [r for r in runs if r.name.startswith("sft-")][0]
    sft_val = [x for x in read_jsonl(sft / "metrics.jsonl") if x["kind"] == "eval" and x["split"] == "validation"][-1]
    for run in runs:                     # iteration 0 of an RL run is its start: the SFT run's final evaluation
        if run != sft:
            first = [x for x in read_jsonl(run / "metrics.jsonl") if x["kind"] == "eval"][0]
            assert first["iteration"] == 0 and first["reused_from"] == sft.name
            assert (first["acc"], first["acc_greedy"]) == (sft_val["acc"], sft_val["acc_greedy"])
    vine = [r for r in runs if "vineppo" in r.name][0]
    last = [x for x in read_jsonl(vine / "metrics.jsonl") if x["kind"] == "train"][-1]
    assert last["mc_rollouts"] > 0 and last["t_mc_rollouts"] > 0 and "kl" in last
    ppo = [r for r in runs if "-ppo-" in r.name][0]
    assert "value_loss" in [x for x in read_jsonl(ppo / "metrics.jsonl") if x["kind"] == "train"][-1]

    r = sh("harness.plot", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in ("results.csv", "table.md", "accuracy_vs_iteration.png", "accuracy_vs_wallclock.png",
              "accuracy_vs_compute.png"):
        assert (out / f).stat().st_size > 0, f
    table = (out / "table.md").read_text()
    assert table.index("| SFT") < table.index("| PPO") < table.index("| VinePPO")
    assert "| 2 |" in table                              # two seeds per RL method

    t0 = time.time()
    r = sh("harness.sweep", "mini.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert time.time() - t0 < 30


@pytest.mark.slow
def test_killed_run_resumes_with_identical_metrics(tmp_path):
    from harness.config import dump_yaml, load_sweep
    from harness.train.job import execute
    (tmp_path / "mini.yaml").write_text(textwrap.dedent(MINI).replace("train.iterations: 3}", "train.iterations: 6}"))
    _, runs = load_sweep(tmp_path / "mini.yaml")
    sft, ppo = runs[0], runs[1]
    for name in ("a", "b"):
        for r in (sft, ppo):
            d = tmp_path / name / r.id
            d.mkdir(parents=True)
            (d / "config.yaml").write_text(dump_yaml(r.cfg))
    execute(tmp_path / "a" / sft.id, threads=1)
    execute(tmp_path / "a" / ppo.id, threads=1)                       # uninterrupted
    execute(tmp_path / "b" / sft.id, threads=1)
    b = tmp_path / "b" / ppo.id
    p = subprocess.Popen([sys.executable, "-m", "harness.run", str(b), "--threads", "1"], env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:                                      # kill -9 once iteration 3 is checkpointed
        st = json.loads((b / "status.json").read_text()) if (b / "status.json").exists() else {}
        if st.get("iteration", 0) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert json.loads((b / "status.json").read_text())["state"] == "running"   # died without saying so
    execute(b, threads=1)                                              # what re-running the sweep does
    ra, rb = read_jsonl(tmp_path / "a" / ppo.id / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(ra) == len(rb) and strip_timing(ra) == strip_timing(rb)
