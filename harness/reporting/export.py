"""Replay finished runs into a tracker: runs made without `logging:`, or made on a cluster without network.

    python -m harness.export results/tiny --to tensorboard [--dir results/tiny/tensorboard]
    python -m harness.export results/tiny --to wandb --project vineppo [--entity E] [--mode offline|online]
    python -m harness.export results/tiny --to mlflow --tracking-uri sqlite:///mlflow.db [--experiment tiny]

Each run becomes one tracker run, named as table.md names it and grouped by sweep, with the resolved config as its
hyperparameters and step = iteration (harness/core/tracking.py). Exporting again, or exporting a run that logged to
the same destination while it trained, sends only the rows the tracker does not hold yet (RUN_DIR/trackers.json).
W&B offline runs land in <results>/wandb/: `wandb sync <results>/wandb/offline-run-*` uploads them later.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from harness.core import tracking
from harness.core.metrics import read_json, read_jsonl
from harness.reporting.runs import tracker_names


def spec_of(a: argparse.Namespace) -> dict:
    if a.to == "tensorboard":
        return {"tensorboard": {"dir": a.dir} if a.dir else True}
    if a.to == "wandb":
        if not a.project:
            raise ValueError("--to wandb needs --project")
        return {"wandb": {"project": a.project, "entity": a.entity, "mode": a.mode, "dir": a.dir}}
    if not a.tracking_uri:
        raise ValueError("--to mlflow needs --tracking-uri (e.g. sqlite:///mlflow.db or http://host:5000)")
    return {"mlflow": {"tracking_uri": a.tracking_uri, "experiment": a.experiment}}


def export(results: Path, spec: dict, log=print) -> int:
    """Send every finished run of the sweep in `results` to the trackers of `spec`; returns how many were sent."""
    ids = read_json(results / "runs.json")
    dirs = [results / i for i in ids] if ids is not None else sorted(p.parent for p in results.glob("*/config.yaml"))
    cfgs = {d.name: yaml.safe_load((d / "config.yaml").read_text()) for d in dirs if (d / "config.yaml").exists()}
    sweep = (yaml.safe_load((results / "sweep.yaml").read_text()) or {}).get("name") if (
        results / "sweep.yaml").exists() else None
    names, sent = tracker_names(cfgs), 0
    for rid, cfg in cfgs.items():
        d = results / rid
        state = (read_json(d / "status.json", {}) or {}).get("state")
        if state != "done":
            log(f"[export] skipped {rid}: {state or 'new'}, not done (rows after its last checkpoint may change)")
            continue
        meta = {"group": sweep or results.name, "name": names[rid], "run_id": rid, "config": cfg}
        trackers = tracking.Trackers(spec, d, meta, warn=lambda m: log(f"[export] {rid}: {m}"))
        rows = read_jsonl(d / "metrics.jsonl")
        trackers.send(rows)
        trackers.close("done")
        sent += 1
        log(f"[export] {rid} -> {names[rid]}: {len(rows)} rows")
    return sent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results directory, e.g. results/tiny")
    p.add_argument("--to", required=True, choices=["tensorboard", "wandb", "mlflow"])
    p.add_argument("--dir", help="tensorboard: the log directory (default <results>/tensorboard); wandb: where its "
                                 "files go (default <results>)")
    p.add_argument("--project", help="wandb: the project")
    p.add_argument("--entity", help="wandb: the entity (team or user)")
    p.add_argument("--mode", choices=["offline", "online"], default="offline", help="wandb (default: offline)")
    p.add_argument("--tracking-uri", help="mlflow: e.g. sqlite:///mlflow.db, http://host:5000")
    p.add_argument("--experiment", help="mlflow: the experiment (default: the sweep's name)")
    a = p.parse_args(argv)
    results = Path(a.results)
    try:
        spec = spec_of(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    why = tracking.problems(spec) or ([] if results.is_dir() else [f"{results} is not a directory"])
    if why:
        print("error: " + "; ".join(why), file=sys.stderr)
        return 2
    n = export(results, spec)
    print(f"{n} runs exported to {a.to}")
    return 0 if n else 1
