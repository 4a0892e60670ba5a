"""Fault injection: what a shared results folder, a kill or a bad file can do to a run, and what the harness does
about it (issue "Honest results under faults")."""
import json
import os
import pickle
import re

import pytest
import torch
import yaml

from harness.config import dump_yaml, load_sweep
from harness.core.metrics import UnsafeFile, read_json, safe_load
from harness.train.job import execute

SFT = """
name: faults
defaults:
  task: {name: arithmetic, n_train: 50, n_validation: 4, n_test: 4, min_ops: 2, max_ops: 2}
  model: {hidden_size: 16, layers: 1, heads: 2, intermediate_size: 32}
  train: {iterations: 4, batch_size: 4, micro_batch_size: 4, checkpoint_every: 2}
  eval: {every: 0, at_start: false, samples: 1, greedy: false, final_splits: [validation]}
  progress: false
groups:
  - name: sft
    set: {algorithm: sft}
"""


class Payload:
    """Unpickling this runs a shell command (what a planted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"loop": Payload(marker)}, f)


def test_safe_load_refuses_a_planted_payload_and_reads_plain_state(tmp_path):
    marker = tmp_path / "pwned"
    plant(tmp_path / "bad.pt", marker)
    with pytest.raises(UnsafeFile, match=r"refusing to load .*bad\.pt"):
        safe_load(tmp_path / "bad.pt")
    assert not marker.exists()
    good = {"model": {"w": torch.ones(2)}, "loop": {"iteration": 3, "tag": "save3", "rows": 4},
            "counts": {"grad_steps": 2}}
    torch.save(good, tmp_path / "good.pt")
    back = safe_load(tmp_path / "good.pt")
    assert back["loop"] == good["loop"] and torch.equal(back["model"]["w"], good["model"]["w"])


def test_resume_from_a_planted_checkpoint_fails_without_running_it(tmp_path):
    d = finished_run(tmp_path)
    marker = tmp_path / "pwned"
    plant(d / "checkpoints" / "latest.pt", marker)
    mark_stopped(d)
    with pytest.raises(UnsafeFile):
        execute(d, threads=1)
    st = read_json(d / "status.json")
    assert st["state"] == "failed" and "refusing to load" in st["error"] and "latest.pt" in st["error"]
    assert not marker.exists()

def prepare(tmp_path, text=SFT):
    """The sweep's single run, its folder written as the sweep writes it: (runs, run folder)."""
    (tmp_path / "s.yaml").write_text(text)
    _, runs = load_sweep(tmp_path / "s.yaml")
    d = tmp_path / "out" / runs[0].id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(dump_yaml(runs[0].cfg))
    return runs, d


def finished_run(tmp_path):
    _, d = prepare(tmp_path)
    assert execute(d, threads=1) == "done"
    return d


def mark_stopped(d):
    status = read_json(d / "status.json")
    status["state"] = "stopped"                      # as if it had been interrupted: the next start resumes
    (d / "status.json").write_text(json.dumps(status))


@pytest.mark.parametrize("damage", ["garbage", "edited", "shortened"])
def test_resume_refuses_metrics_that_differ_from_what_the_checkpoint_counted(tmp_path, damage):
    from harness.core.metrics import MetricsMismatch
    d = finished_run(tmp_path)
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[1])
    if damage == "garbage":
        lines[1] = "{not json\n"
    elif damage == "edited":
        lines[1] = json.dumps({**row, "loss": 0.0}) + "\n"
    else:
        lines = lines[:1]
    (d / "metrics.jsonl").write_text("".join(lines))
    mark_stopped(d)
    with pytest.raises(MetricsMismatch, match="metrics.jsonl: the checkpoint counts its first"):
        execute(d, threads=1)
    assert (d / "metrics.jsonl").read_text() == "".join(lines)       # nothing rewritten


def test_plot_separates_grid_points_and_names_every_run_it_leaves_out(tmp_path, capsys):
    from harness.reporting import plot
    from test_report import write_run
    r = tmp_path / "sweep"
    kw = {"kls": [0.0, 0.1], "train": [0.3, 0.4]}
    write_run(r, "sft-s0", "sft", 0, [0.3])
    for name, lr in (("rl-ppo-lr1000-s0", 1e3), ("rl-ppo-lr1e+06-s0", 1e6)):
        d = write_run(r, name, "ppo", 0, [0.3, 0.1], **kw)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["train"]["lr"] = lr
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_run(r, "rl-grpo-s0", "grpo", 0, [0.3, 0.4], **kw)
    (r / "rl-grpo-s0" / "status.json").write_text(json.dumps({"state": "failed", "error": "boom"}))
    write_run(r, "rl-rloo-s0", "rloo", 0, [0.3, 0.4], **kw)
    (r / "rl-rloo-s0" / "status.json").write_text("{}")
    d = write_run(r, "rl-vineppo-s0", "vineppo", 0, [0.3, 0.4], **kw)
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:-1]) + "garbage\n")      # the final test row is damaged
    assert plot.main([str(r)]) == 0
    md = (r / "table.md").read_text()
    err = capsys.readouterr().err
    assert "| PPO lr=1000 |" in md and "| PPO lr=1e+06 |" in md          # two configs, one seed each
    for needle in ("rl-grpo-s0: failed (boom): left out", "rl-rloo-s0: no state in status.json",
                   f"rl-vineppo-s0: metrics.jsonl line {len(lines)} unreadable",
                   "rl-vineppo-s0: done, but has no test evaluation at its last iteration (10"):
        assert needle in md and needle in err, needle


def test_plot_of_an_sft_only_sweep(tmp_path):
    from harness.reporting import plot
    from test_report import write_run
    write_run(tmp_path / "sweep", "sft-s0", "sft", 0, [0.3])
    assert plot.main([str(tmp_path / "sweep")]) == 0
    assert "| SFT |" in (tmp_path / "sweep" / "table.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_to_a_local_sweep_stops_its_runs_and_leaves_none_training(tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time
    from helpers import env
    (tmp_path / "s.yaml").write_text(SFT.replace("iterations: 4", "iterations: 400"))
    p = subprocess.Popen([sys.executable, "-m", "harness.sweep", "s.yaml", "--output", "out"], cwd=tmp_path,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, status = time.time() + 120, tmp_path / "none"
    while time.time() < deadline:
        status = next(iter((tmp_path / "out").glob("sft-*")), tmp_path) / "status.json"
        if (read_json(status, {}) or {}).get("iteration", 0) >= 5:
            break
        time.sleep(0.1)
    p.send_signal(getattr(signal, sig))
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 130, out
    st = read_json(status)
    assert st["state"] == "stopped" and 5 <= st["iteration"] < 400, st
    with pytest.raises(ProcessLookupError):          # the run's process is gone
        os.kill(st["pid"], 0)
    assert "stopping 1 running run(s)" in out and "resume the runs from their last checkpoint" in out
    ck = safe_load(status.parent / "checkpoints" / "latest.pt")
    assert st["iteration"] <= ck["loop"]["iteration"] < 400            # stopped at a boundary, checkpointed


@pytest.mark.slow
def test_a_second_sweep_leaves_a_run_in_training_alone(tmp_path):
    """Two sweeps on one output: the second finds the run's lock held, names the holder and does not train it; the
    run ends with exactly one set of metrics rows."""
    import subprocess
    import sys
    import time
    from harness.core.metrics import lock_holder, read_jsonl
    from helpers import env, sh
    (tmp_path / "s.yaml").write_text(SFT.replace("iterations: 4", "iterations: 300"))
    first = subprocess.Popen([sys.executable, "-m", "harness.sweep", "s.yaml", "--output", "out"], cwd=tmp_path,
                             env={**env(), "HARNESS_LIVE_EVERY": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline, run = time.time() + 120, None
    while time.time() < deadline:
        run = next(iter((tmp_path / "out").glob("sft-*")), None)
        if run and (read_json(run / "status.json", {}) or {}).get("iteration", 0) >= 2:
            break
        time.sleep(0.1)
    assert lock_holder(run) and f"pid {read_json(run / 'status.json')['pid']}" in lock_holder(run)
    second = sh("harness.sweep", "s.yaml", "--output", "out", cwd=tmp_path, timeout=120)
    assert second.returncode == 1 and "being trained by pid" in second.stdout, second.stdout
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    # the sweep you can watch: live lines per running run and an overall ETA (plain lines into a pipe)
    assert re.search(r"\[sweep\]   sft-\S+: it \d+/300, .*s/it, ETA \d+s", out), out
    assert re.search(r"\[sweep\] 0/1 finished, 1 running, 0 waiting, ETA ~[\d.]+ min", out), out
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == list(range(1, 301))
    assert read_json(run / "status.json")["state"] == "done" and lock_holder(run) is None


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import algorithms.sft
    from harness.core.metrics import read_jsonl
    from harness.train.loop import Diverged
    calls, real = [], algorithms.sft.masked_mean

    def poisoned(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * float("nan") if len(calls) == 3 else out    # the loss of iteration 3
    monkeypatch.setattr(algorithms.sft, "masked_mean", poisoned)
    _, d = prepare(tmp_path)
    with pytest.raises(Diverged, match="iteration 3: non-finite loss=nan"):
        execute(d, threads=1)
    st = read_json(d / "status.json")
    assert st["state"] == "failed" and "non-finite" in st["error"]
    assert safe_load(d / "checkpoints" / "latest.pt")["loop"]["iteration"] == 2
    assert [r["iteration"] for r in read_jsonl(d / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]


def test_a_kl_beyond_its_bound_is_a_warning_in_status_and_table(tmp_path):
    from harness.reporting import plot
    from harness.core.metrics import read_jsonl
    from harness.launch.status import status_lines
    ppo = SFT.replace("set: {algorithm: sft}", "set: {algorithm: ppo, train: {iterations: 3, warn_kl: 1.0e-9, "
                      "warn_grad_norm: 1.0e-9, "
                      "prompts_per_iteration: 2, samples_per_prompt: 2}, eval: {final_splits: [validation, test]}}")
    runs, d = prepare(tmp_path, ppo)
    assert execute(d, threads=1) == "done"
    warn = [r for r in read_jsonl(d / "metrics.jsonl") if r["kind"] == "warning"]
    assert warn and any("KL to the reference" in w["message"] and "train.warn_kl 1e-09" in w["message"] for w in warn)
    assert any("gradient norm" in w["message"] and "train.warn_grad_norm 1e-09" in w["message"] for w in warn)
    assert any("warning(s), last: iteration" in line for line in status_lines(runs, tmp_path / "out"))
    assert plot.main([str(tmp_path / "out")]) == 0
    assert "warning(s), first: iteration" in (tmp_path / "out" / "table.md").read_text()


def test_a_deleted_final_is_regenerated_from_the_last_checkpoint(tmp_path):
    import shutil
    from harness.core.metrics import read_jsonl, run_done
    from harness.launch.status import run_state
    d = finished_run(tmp_path)
    rows = read_jsonl(d / "metrics.jsonl")
    weights = (d / "final" / "model.safetensors").read_bytes()
    shutil.rmtree(d / "final")
    assert run_done(d) is None and run_state(d)["state"] == "damaged"
    assert execute(d, threads=1) == "done"
    assert (d / "final" / "model.safetensors").read_bytes() == weights      # the same weights, not retrained
    assert read_jsonl(d / "metrics.jsonl") == rows and run_done(d)
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:1] + ["{garbage\n"] + lines[2:]))
    st = run_state(d)
    assert st["state"] == "damaged" and "metrics.jsonl line 2 unreadable" in st["detail"]


def test_training_rows_say_how_far_each_step_moved_the_model(tmp_path):
    from harness.core.metrics import read_jsonl
    rows = [r for r in read_jsonl(finished_run(tmp_path) / "metrics.jsonl") if r["kind"] == "train"]
    assert len(rows) == 4 and all(0 < r["policy_update_rel"] < 0.1 and r["policy_changed"] > 0.9 for r in rows), rows


def test_steps_without_a_gradient_do_not_count_toward_stuck():
    """A batch without signal (all advantages 0: every sample of a group wrong) rightly moves nothing; only steps
    that had a gradient to apply count toward train.stuck_steps."""
    import torch
    from harness.runtime.backends import Movement
    mv = Movement([torch.nn.Parameter(torch.ones(8))])
    for norm in (0.0, float("nan"), None):
        mv.around_step(lambda: None)
        mv.count(norm)
    assert mv.steps == 0 and mv.pop()["changed"] == 0.0
    mv.count(0.5)
    assert mv.steps == 1


@pytest.mark.parametrize("patch", ["lr: 1.0e-12", "lr: 1.0e-6, allow_low_precision_weights: true"])
def test_a_policy_that_does_not_move_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, patch):
    """Updates that round away (an lr below fp32's resolution; bf16 weights without a master copy at lr 1e-6):
    after train.stuck_steps steps the run stops, names the cause, and its last checkpoint stays."""
    from harness.runtime.backends import Stuck
    from harness.core.metrics import read_jsonl
    text = SFT.replace("checkpoint_every: 2}", f"checkpoint_every: 2, stuck_steps: 3, {patch}}}")
    if "allow_low_precision" in patch:
        text = text.replace("model: {", "model: {dtype: bfloat16, ")
    _, d = prepare(tmp_path, text)
    with pytest.raises(Stuck, match=r"iteration 3: after 3 optimizer steps with a gradient only [\d.]+% of the policy's"):
        execute(d, threads=1)
    st = read_json(d / "status.json")
    assert st["state"] == "failed" and "differ from its start" in st["error"]
    assert safe_load(d / "checkpoints" / "latest.pt")["loop"]["iteration"] == 2
    assert [r["iteration"] for r in read_jsonl(d / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]
