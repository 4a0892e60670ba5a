"""Trackers, for real and offline: TensorBoard event files read back with tensorboard's own reader, W&B in offline
mode (its transaction log read back), MLflow on a local sqlite store read back with its client. A run that crashes
between checkpoints and resumes shows one continuous curve in each, equal to metrics.jsonl; harness.export replays a
finished sweep without duplicating what a tracker already holds; a tracker that cannot start is refused at
validation, one that fails mid-run is a warning row."""
from __future__ import annotations

import glob
import json
import struct
import textwrap

import pytest
import yaml

from harness.config import ConfigError, dump_yaml, load_sweep
from harness.core import tracking
from harness.core.metrics import read_json, read_jsonl
from harness.launch.sweep import name_trackers
from harness.reporting.runs import tracker_names
from harness.train.job import execute

from helpers import MINI_MODEL, MINI_TASK, sh

SWEEP = """
name: trk
defaults:
""" + MINI_TASK + MINI_MODEL + """  train: {batch_size: 8, lr: 3.0e-3, checkpoint_every: 2, iterations: 6}
  eval: {every: 0, samples: 1, at_start: false, max_problems: 4}
  threads: 1
  progress: false
  logging: LOGGING
groups:
  - name: sft
    set: {algorithm: sft}
"""


def logging_spec(tmp_path) -> str:
    return ("{tensorboard: true, wandb: {project: harness-test, mode: offline}, "
            f"mlflow: {{tracking_uri: 'sqlite:///{tmp_path}/mlflow.db'}}}}")


def make_run(tmp_path, spec: str):
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP).replace("LOGGING", spec))
    sweep, runs = load_sweep(tmp_path / "s.yaml")
    (run,) = name_trackers(sweep, runs)
    d = tmp_path / "out" / run.id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(dump_yaml(run.cfg))
    return d, run


# --- reading the trackers back --------------------------------------------------------------------------------------
def tensorboard_curve(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def wandb_records(wandb_dir):
    """Every record of W&B's offline transaction logs (LevelDB-log framing in 32 KiB blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb
    for path in sorted(glob.glob(f"{wandb_dir}/wandb/offline-run-*/run-*.wandb")):
        data, pos, buf = open(path, "rb").read(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:
                pos += 32768 - pos % 32768
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            buf = chunk if kind in (1, 2) else buf + chunk
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                yield rec


def wandb_curve(wandb_dir, key):
    out = []
    for rec in wandb_records(wandb_dir):
        if rec.WhichOneof("record_type") == "history":
            h = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            if key in h:
                out.append((h["_step"], h[key]))
    return out


def mlflow_client(tmp_path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def expected(run_dir, key="loss"):
    """metrics.jsonl's curve of a training column, as (step, value) pairs a tracker must hold (TensorBoard and W&B
    keep float32 / JSON floats: equal to 1e-6)."""
    return [(r["iteration"], pytest.approx(r[key], rel=1e-6)) for r in read_jsonl(run_dir / "metrics.jsonl")
            if r["kind"] == "train"]


# --- tests --------------------------------------------------------------------------------------------------------
def test_scalars_and_ids():
    assert tracking.scalars({"kind": "train", "iteration": 3, "loss": 0.5, "grad_steps": 6, "stuck": False}) == \
        {"train/loss": 0.5, "train/grad_steps": 6.0}
    assert tracking.scalars({"kind": "eval", "iteration": 0, "split": "test", "acc": 0.25, "reused_from": "x"}) == \
        {"test/acc": 0.25}
    assert tracking.scalars({"kind": "warning", "iteration": 1, "message": "m"}) == {}
    assert tracking.flat({"train": {"lr": 1e-3, "splits": ["a"]}, "seed": 0}) == {"train.lr": 1e-3,
                                                                                 "train.splits": '["a"]', "seed": 0}
    long = tracking.tracker_id("s" * 80, "rl-ppo-s0-abcdef")
    assert len(long) == 64 and long == tracking.tracker_id("s" * 80, "rl-ppo-s0-abcdef")
    assert tracking.tracker_id("tiny", "rl-ppo-s0-abc") == "tiny-rl-ppo-s0-abc"
    # names ignore the logging section (each run's own name would otherwise make every label differ)
    cfgs = {f"r{s}": {"algorithm": "ppo", "seed": s, "train": {"lr": lr}, "logging": {"name": f"n{s}"}}
            for s, lr in ((0, 1e-5), (1, 1e-5), (2, 3e-5))}
    assert tracker_names(cfgs) == {"r0": "PPO lr=1e-05 s0", "r1": "PPO lr=1e-05 s1", "r2": "PPO lr=3e-05 s2"}


def test_a_crash_between_checkpoints_leaves_one_continuous_curve_in_each_tracker(tmp_path):
    d, run = make_run(tmp_path, logging_spec(tmp_path))
    assert run.cfg.logging.name == "SFT s0" and run.cfg.logging.group == "trk"
    polls = []

    def crash():                                       # a hard kill after iteration 3: its checkpoint is iteration 2
        polls.append(1)
        if len(polls) == 4:
            raise RuntimeError("killed")
        return False
    with pytest.raises(RuntimeError, match="killed"):
        execute(d, threads=1, stop=crash)
    rows_at_crash = len(read_jsonl(d / "metrics.jsonl"))
    state = read_json(d / "trackers.json")
    assert {v["sent"] for v in state.values()} == {2} and rows_at_crash == 3   # only what the checkpoint keeps
    assert tensorboard_curve(tmp_path / "out" / "tensorboard" / "SFT s0", "train/loss") == expected(d)[:2]
    assert execute(d, threads=1) == "done"             # resumes at iteration 2, rewrites 3, goes on to 6
    truth = expected(d)
    assert [s for s, _ in truth] == [1, 2, 3, 4, 5, 6] and len(read_jsonl(d / "metrics.jsonl")) == 8   # + 2 evals
    assert tensorboard_curve(tmp_path / "out" / "tensorboard" / "SFT s0", "train/loss") == truth
    assert wandb_curve(tmp_path / "out", "train/loss") == truth
    c = mlflow_client(tmp_path)
    (mrun,) = c.search_runs([c.get_experiment_by_name("trk").experiment_id])
    assert mrun.info.run_id == read_json(d / "trackers.json")[next(k for k in state if k.startswith("mlflow"))]["run_id"]
    assert sorted((m.step, m.value) for m in c.get_metric_history(mrun.info.run_id, "train/loss")) == truth
    final = [r for r in read_jsonl(d / "metrics.jsonl") if r["kind"] == "eval" and r["split"] == "test"]
    assert [(m.step, m.value) for m in c.get_metric_history(mrun.info.run_id, "test/acc")] == \
        [(6, pytest.approx(final[0]["acc"]))]
    # one tracker run per harness run, named like table.md, grouped by sweep, the resolved config as hyperparameters
    assert mrun.info.run_name == "SFT s0" and mrun.info.status == "FINISHED"
    assert mrun.data.params["train.lr"] == "0.003" and mrun.data.tags["harness.sweep"] == "trk"
    runs = [r.run for r in wandb_records(tmp_path / "out") if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {f"trk-{d.name}"} and len(runs) == 2      # two processes, one W&B run
    assert runs[0].display_name == "SFT s0" and runs[0].run_group == "trk"
    cfg = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert cfg["train"]["lr"] == 0.003 and cfg["algorithm"] == "sft"


def test_export_replays_a_finished_sweep_once(tmp_path):
    d, _ = make_run(tmp_path, "{}")
    (tmp_path / "out" / "runs.json").write_text(json.dumps([d.name]))
    (tmp_path / "out" / "sweep.yaml").write_text((tmp_path / "s.yaml").read_text())
    assert execute(d, threads=1) == "done" and not (d / "trackers.json").exists()
    tb = tmp_path / "tb"
    for _ in range(2):                                 # a second export sends nothing new
        r = sh("harness.export", str(tmp_path / "out"), "--to", "tensorboard", "--dir", str(tb), cwd=tmp_path)
        assert r.returncode == 0 and "1 runs exported" in r.stdout, r.stderr
    assert tensorboard_curve(tb / "SFT s0", "train/loss") == expected(d)
    r = sh("harness.export", str(tmp_path / "out"), "--to", "mlflow", "--tracking-uri", "ftp://nowhere", cwd=tmp_path)
    assert r.returncode == 2 and "is not a tracking URI" in r.stderr


def test_trackers_that_cannot_start_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"s\.yaml.*logging\.mlflow\.tracking_uri: 'ftp://x' is not a tracking URI"):
        make_run(tmp_path, "{mlflow: {tracking_uri: 'ftp://x'}}")
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(ConfigError, match=r"logging\.wandb: the 'wandb' package is not installed"):
        make_run(tmp_path, "{wandb: {project: p}}")
    monkeypatch.undo()
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP).replace("LOGGING", "{mlflow: {tracking_uri: 'ftp://x'}}"))
    r = sh("harness.sweep", "s.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "tracking_uri" in r.stderr and not (tmp_path / "results").exists()


def test_a_tracker_failing_mid_run_is_a_warning_row_and_the_run_goes_on(tmp_path, monkeypatch):
    d, _ = make_run(tmp_path, "{tensorboard: true}")
    monkeypatch.setattr("harness.train.loop.TRACK_SLOW_S", -1.0)        # every send counts as slow: warned too

    def broken(self, step, values):
        raise OSError("disk full")
    monkeypatch.setattr(tracking.TensorBoard, "log", broken)
    assert execute(d, threads=1) == "done"
    rows = read_jsonl(d / "metrics.jsonl")
    warn = [r["message"] for r in rows if r["kind"] == "warning"]
    failed = [m for m in warn if "tracker tensorboard" in m]
    assert len(failed) == 1 and "disk full" in failed[0] and "harness.export" in failed[0]
    assert any("sending rows to the trackers took" in m for m in warn)
    assert all("t_track" in r for r in rows if r["kind"] == "train")
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((d / "config.yaml").read_text())["logging"]["tensorboard"] is True
