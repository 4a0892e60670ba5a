"""Experiment trackers fed from metrics.jsonl: TensorBoard, Weights & Biases (offline or online) and MLflow.

Rows reach a tracker once they are durable, i.e. once the checkpoint that keeps them is written (every
`train.checkpoint_every` iterations, at a stop, at the end). A run killed between checkpoints resumes from its last
checkpoint and writes the rows after it again; had they been sent as they were written, the tracker would hold them
twice, or hold values metrics.jsonl no longer has. So each tracker sees exactly the rows of metrics.jsonl, in order,
once: one continuous curve per run, the row count the source of truth. RUN_DIR/trackers.json keeps, per destination,
the tracker's own run id and how many rows it holds; a resumed or requeued run, and `python -m harness.export`,
continue the same tracker run from there.

A tracker that fails is a warning, never the run's end: the run goes on writing its files, and the rows the tracker
missed reach it when the run resumes or through harness.export.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import time
from pathlib import Path
from urllib.parse import urlparse

from harness.core.metrics import atomic_write, read_json

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
MLFLOW_SCHEMES = {"file", "sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql"}


def problems(spec: dict) -> list[str]:
    """Why the trackers in `spec` (a run's `logging:` section) cannot start here: a missing package, a malformed
    tracking URI. Checked when a config is validated, so a sweep refuses before it submits anything."""
    out = []
    for name, pkg in PACKAGES.items():
        if spec.get(name) and importlib.util.find_spec(pkg) is None:
            out.append(f"logging.{name}: the {pkg!r} package is not installed (pip install -e '.[tracking]')")
    ml = spec.get("mlflow")
    if ml:
        uri = urlparse(ml["tracking_uri"])
        if uri.scheme not in MLFLOW_SCHEMES:
            out.append(f"logging.mlflow.tracking_uri: {ml['tracking_uri']!r} is not a tracking URI (expected "
                       f"{', '.join(sorted(MLFLOW_SCHEMES))}: e.g. sqlite:///mlflow.db or http://host:5000)")
        elif uri.scheme == "sqlite" and importlib.util.find_spec("sqlalchemy") is None:
            out.append("logging.mlflow.tracking_uri: a sqlite store needs the 'sqlalchemy' package "
                       "(pip install -e '.[tracking]')")
    return out


def scalars(row: dict) -> dict[str, float]:
    """A metrics row as tracker scalars: training columns under train/, an evaluation's under its split
    (test/acc, validation/acc_greedy); warnings and text are not scalars."""
    kind = row.get("kind")
    if kind not in ("train", "eval"):
        return {}
    prefix = "train" if kind == "train" else row.get("split", "eval")
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in ("kind", "iteration", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> {"train.lr": 1e-05, ...}; an empty mapping stays a value (also what table.md labels use)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flat(d: dict) -> dict:
    """flatten() with every value a tracker hyperparameter can hold: scalars as they are, the rest as JSON."""
    scalar = (int, float, str, bool, type(None))
    return {k: v if isinstance(v, scalar) else json.dumps(v) for k, v in flatten(d).items()}


def tracker_id(group: str, run_id: str) -> str:
    """A tracker run id from the sweep and the run: stable across resumes, unique across sweeps of one project,
    within W&B's 64 characters of [A-Za-z0-9_-]."""
    rid = re.sub(r"[^A-Za-z0-9_-]", "-", f"{group}-{run_id}")
    return rid if len(rid) <= 64 else rid[:55] + "-" + hashlib.sha1(rid.encode()).hexdigest()[:8]


class TensorBoard:
    def __init__(self, opts: dict, run_dir: Path, meta: dict):
        from torch.utils.tensorboard import SummaryWriter   # lazy: optional package (.[tracking])
        self.key = f"tensorboard:{opts.get('dir') or ''}"
        logdir = Path(opts.get("dir") or run_dir.parent / "tensorboard") / re.sub(r"[/\\]", "_", meta["name"])
        self.w = SummaryWriter(str(logdir))
        self.meta = meta

    def start(self, state: dict) -> None:
        if state.get("sent"):
            return
        from torch.utils.tensorboard.summary import hparams  # lazy: optional package (.[tracking])
        hp = {k: ("" if v is None else v) for k, v in flat(self.meta["config"]).items()}
        for summary in hparams(hp, {"test/acc": 0, "validation/acc": 0, "train/train_reward": 0}):
            self.w.file_writer.add_summary(summary)
        self.w.add_text("config", "```\n" + json.dumps(self.meta["config"], indent=1) + "\n```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def close(self, status: str) -> None:
        self.w.close()


class WandB:
    def __init__(self, opts: dict, run_dir: Path, meta: dict):
        import wandb                                          # lazy: optional package (.[tracking])
        self.key = f"wandb:{opts.get('entity') or ''}/{opts['project']}"
        self.wandb, self.opts, self.meta, self.run_dir = wandb, opts, meta, run_dir

    def start(self, state: dict) -> None:
        o, m = self.opts, self.meta
        state.setdefault("id", tracker_id(m["group"], m["run_id"]))
        d = Path(o.get("dir") or self.run_dir.parent)
        d.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=o["project"], entity=o.get("entity"), id=state["id"], name=m["name"],
                                   group=m["group"], job_type=m["config"].get("algorithm"), config=m["config"],
                                   dir=str(d), mode=o.get("mode", "offline"), resume="allow",
                                   settings=self.wandb.Settings(silent=True, console="off"))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == "failed" else 0)   # (a stopped run resumes into the same one)


class MLflow:
    def __init__(self, opts: dict, run_dir: Path, meta: dict):
        from mlflow.tracking import MlflowClient             # lazy: optional package (.[tracking])
        self.key = f"mlflow:{opts['tracking_uri']}#{opts.get('experiment') or meta['group']}"
        self.client, self.opts, self.meta = MlflowClient(tracking_uri=opts["tracking_uri"]), opts, meta

    def start(self, state: dict) -> None:
        from mlflow.entities import Param                    # lazy: optional package (.[tracking])
        c, m = self.client, self.meta
        if "run_id" in state:
            c.update_run(state["run_id"], status="RUNNING")
            self.id = state["run_id"]
            return
        name = self.opts.get("experiment") or m["group"]
        exp = c.get_experiment_by_name(name)
        eid = exp.experiment_id if exp else c.create_experiment(name)
        run = c.create_run(eid, run_name=m["name"], tags={"harness.sweep": m["group"], "harness.run": m["run_id"],
                                                           "harness.algorithm": str(m["config"].get("algorithm"))})
        params = [Param(k[:250], str(v)[:6000]) for k, v in flat(m["config"]).items()]
        for i in range(0, len(params), 100):                 # MLflow takes at most 100 params per batch
            c.log_batch(run.info.run_id, params=params[i:i + 100])
        self.id = state["run_id"] = run.info.run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric                   # lazy: optional package (.[tracking])
        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.id, status={"done": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


class Trackers:
    """The trackers of one run. `meta`: group (the sweep), name (the run's label, as table.md names it), run_id and
    config (the resolved run config, the tracker run's hyperparameters). `warn(message)` is told of failures."""

    def __init__(self, spec: dict, run_dir: Path, meta: dict, warn=print):
        self.run_dir, self.warn, self.path = run_dir, warn, run_dir / "trackers.json"
        self.state = read_json(self.path, {}) or {}
        self.live: list = []
        for kind, cls in KINDS.items():
            opts = spec.get(kind)
            if not opts:
                continue
            try:
                t = cls({} if opts is True else opts, run_dir, meta)
                t.start(self.state.setdefault(t.key, {"sent": 0}))
                self.live.append(t)
            except Exception as e:                             # a tracker that cannot start is not the run's end
                self.warn(f"tracker {kind} could not start ({type(e).__name__}: {e}); the run goes on without it")
        self._save()

    def send(self, rows: list[dict]) -> float:
        """Log rows[sent:] to every live tracker (step = the row's iteration); returns the seconds it took."""
        t0 = time.perf_counter()
        for t in list(self.live):
            st = self.state[t.key]
            try:
                for row in rows[st["sent"]:]:
                    values = scalars(row)
                    if values:
                        t.log(int(row["iteration"]), values)
                    st["sent"] += 1
            except Exception as e:
                self.live.remove(t)
                self.warn(f"tracker {t.key} failed ({type(e).__name__}: {e}) after {st['sent']} rows; the run "
                          f"goes on writing its files, and the rest reaches the tracker on resume or with "
                          f"harness.export")
        self._save()
        return time.perf_counter() - t0

    def close(self, status: str) -> None:
        """status: the run's, done | stopped (it resumes into the same tracker runs) | failed."""
        for t in self.live:
            try:
                t.close(status)
            except Exception as e:
                self.warn(f"tracker {t.key} did not close cleanly ({type(e).__name__}: {e})")
        self.live = []

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self.state, indent=1) + "\n")
