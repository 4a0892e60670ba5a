"""Reading what runs wrote: the one loader every table, figure, report section and check uses (files only).

A run folder holds config.yaml, metrics.jsonl, status.json, optionally eval_test.json / lm_eval.json (external
evaluations) and analysis/values/iter_*.json (the value-analysis cache). `scan` reads them once into Run records;
the frames below turn those into tables of numbers, one per use, and say which runs they leave out and why.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness.core.metrics import read_json, read_jsonl
from harness.core.tracking import flatten
from harness.reporting import paper
from harness.reporting.style import FAMILY, display


@dataclass
class Run:
    dir: Path
    cfg: dict | None                    # None: config.yaml missing or unreadable (`error` says why)
    error: str | None = None
    metrics: list[dict] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)    # metrics.jsonl lines that are not JSON
    status: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)             # {"eval_cli_acc": ..., "lm_eval_acc": ...}

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def state(self) -> str | None:
        return self.status.get("state")


def read(d: Path) -> Run:
    """One run folder; a config.yaml that is missing or not a mapping gives a Run without cfg (never an error)."""
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        if not isinstance(cfg, dict):
            raise ValueError("config.yaml is not a mapping")
    except (OSError, yaml.YAMLError, ValueError) as e:
        return Run(d, None, str(e), status=read_json(d / "status.json", {}) or {})
    bad: list[int] = []
    metrics = read_jsonl(d / "metrics.jsonl", bad)
    extra = {"eval_cli_acc": (read_json(d / "eval_test.json", {}) or {}).get("acc"),
             "lm_eval_acc": (read_json(d / "lm_eval.json", {}) or {}).get("acc")}
    return Run(d, cfg, None, metrics, bad, read_json(d / "status.json", {}) or {}, extra)


def scan(results: Path) -> list[Run]:
    """Every folder of a sweep's results directory that has a config.yaml, by name."""
    return [read(d) for d in sorted(p for p in results.iterdir() if p.is_dir() and (p / "config.yaml").exists())]


def with_algorithm(runs: list[Run]) -> list[Run]:
    """The runs whose config names an algorithm (the report's sections); the others skipped with a warning."""
    out = []
    for r in runs:
        if r.cfg is None or "algorithm" not in r.cfg:
            warnings.warn(f"skipping {r.dir}: {r.error or 'config.yaml is not a run config'}")
            continue
        out.append(r)
    return out


def cache_path(run_dir: Path, iteration: int) -> Path:
    """Where `python -m harness.analyze values` writes its result for one snapshot (read back by load_cache)."""
    return run_dir / "analysis" / "values" / f"iter_{iteration:06d}.json"


def load_cache(run_dir: Path) -> dict[int, dict]:
    """The cached analyses of a run: {snapshot iteration: result (with its `params`)}; unreadable files skipped."""
    out = {}
    for p in sorted((run_dir / "analysis" / "values").glob("iter_*.json")):
        r = read_json(p)
        if isinstance(r, dict) and "mae" in r and "params" in r:
            out[int(r["iteration"])] = r
    return out


# --- evaluations: the table, the accuracy curves, the check --------------------------------------------------------
def load(results: Path) -> pd.DataFrame:
    """evals(scan(results))."""
    return evals(scan(results))


def evals(runs: list[Run]) -> pd.DataFrame:
    """One row per run x evaluation. Runs are told apart by their whole config but the seed: runs sharing a label
    whose configs differ (a grid) get the differing values in their label (`ppo-lr=0.001`), never merged as seeds.
    Every run left out of the table or the curves is said why, on stderr and in df.attrs["left_out"]."""
    kept, notes = [], []
    for r in runs:
        if r.cfg is None:
            notes.append(f"{r.name}: unreadable config.yaml ({r.error}): left out")
            continue
        cfg, metrics, state = r.cfg, r.metrics, r.state
        if r.bad_lines:
            notes.append(f"{r.name}: metrics.jsonl line {', '.join(map(str, r.bad_lines))} unreadable (skipped)")
        if state in ("failed", "blocked"):
            notes.append(f"{r.name}: {state} ({r.status.get('error') or 'no error recorded'}): left out")
            continue
        ev = [m for m in metrics if m.get("kind") == "eval"]
        if not ev:
            notes.append(f"{r.name}: no evaluation rows: left out")
            continue
        last = max(m.get("iteration") or 0 for m in ev)
        total = (cfg.get("train") or {}).get("iterations")
        if state is None:
            notes.append(f"{r.name}: no state in status.json: in the curves, not in the table")
        elif state != "done":
            notes.append(f"{r.name}: {state} at iteration {last}: in the curves, not in the table")
        else:
            finals = (cfg.get("eval") or {}).get("final_splits", ["test"])
            missing = [sp for sp in finals if not any(m.get("split") == sp and m.get("iteration") == total
                                                      for m in ev)]
            if missing:
                notes.append(f"{r.name}: done, but has no {'/'.join(missing)} evaluation at its last iteration "
                             f"({total}; damaged metrics.jsonl?): in the curves, not in the table")
        warn = [m for m in metrics if m.get("kind") == "warning"]
        if warn:
            notes.append(f"{r.name}: {len(warn)} warning(s), first: {warn[0].get('message')}")
        kept.append(r)
    configs = {r.name: r.cfg for r in runs if r.cfg is not None}     # a run's init_run is looked up among these
    labels = config_labels({r.name: r.cfg for r in kept})
    rows = []
    for r in kept:
        cfg = r.cfg
        setting = paper.setting(cfg, configs)
        last_train: dict = {}
        for m in r.metrics:
            if m.get("kind") == "train":
                last_train = m
            elif m.get("kind") == "eval":
                rows.append({"run": r.name, "algorithm": cfg.get("algorithm"), "label": labels[r.name],
                             "group": cfg.get("group"), "seed": cfg.get("seed"), "state": r.state or "unknown",
                             "setting": setting, **r.extra,
                             "total_iterations": cfg.get("train", {}).get("iterations"),
                             "episodes": (m.get("iteration") or 0) * _episodes_per_iteration(cfg),
                             "kl": last_train.get("kl"), "train_reward": last_train.get("train_reward"),
                             **{k: m.get(k) for k in ("iteration", "grad_steps", "wall_s", "flops", "device_s",
                                                      "tokens_generated", "split", "acc", "acc_greedy",
                                                      "pass_at_n", "n_problems", "samples", "temperature")}})
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    df = pd.DataFrame(rows)
    df.attrs["left_out"] = notes
    return df


def config_labels(cfgs: dict[str, dict]) -> dict[str, str]:
    """Run name -> its label, plus `-key=value` for every config value (seed aside) that differs between the runs
    sharing that label, so that only seeds of one config are ever averaged together."""
    flat = {n: flatten({k: v for k, v in c.items() if k not in ("seed", "logging")}) for n, c in cfgs.items()}
    by_label: dict[str, list[str]] = {}
    for n, c in cfgs.items():
        by_label.setdefault(str(c.get("label") or c.get("algorithm")), []).append(n)
    out = {}
    for lab, names in by_label.items():
        keys = sorted({k for n in names for k in flat[n]})
        differ = [k for k in keys if len({repr(flat[n].get(k)) for n in names}) > 1]
        for n in names:
            out[n] = lab + "".join(f"-{k.split('.')[-1]}={_value(flat[n].get(k))}" for k in differ)
    return out


def tracker_names(cfgs: dict[str, dict]) -> dict[str, str]:
    """Run name -> its name in the trackers: its table.md label and its seed, e.g. `PPO lr=1e-05 s0`."""
    labels = config_labels(cfgs)
    return {n: f"{display(labels[n])} s{c.get('seed', 0)}" for n, c in cfgs.items()}


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _episodes_per_iteration(cfg: dict) -> float:
    """Responses sampled and trained on per iteration: prompts x samples for the PPO family, NaN for the others
    (DPO+ samples once, RestEM fine-tunes on a filtered set)."""
    t = cfg.get("train") or {}
    if cfg.get("algorithm") not in FAMILY:
        return float("nan")
    return float(t.get("prompts_per_iteration", 0) * t.get("samples_per_prompt", 0))


# --- the report's frames (runs from with_algorithm: each names its algorithm) --------------------------------------
def values(runs: list[Run]) -> tuple[pd.DataFrame, dict]:
    """One row per analyzed snapshot, and the raw {(run, iteration): result} for the scatter."""
    rows, raw = [], {}
    for r in runs:
        for it, a in load_cache(r.dir).items():
            raw[(r.name, it)] = a
            rows.append({"run": r.name, "algorithm": a["algorithm"], "seed": a["seed"], "iteration": it,
                         "total": a["total_iterations"], "mae": a["mae"], "top1": a["top1"],
                         "random": a["top1_random"], "n_states": a["n_states"], "n_rank": a["n_ranking_states"],
                         "gt_rollouts": a["params"]["gt_rollouts"], "K": a.get("K")})
    return pd.DataFrame(rows), raw


def kl_train(runs: list[Run], split: str) -> pd.DataFrame:
    """Each evaluation on `split` with the KL of the last training batch before it (0 at iteration 0: the policy
    is the reference) and the training accuracy averaged over the training batches since the previous evaluation."""
    rows = []
    for r in runs:
        if r.cfg["algorithm"] == "sft":
            continue
        train, prev = [], 0
        for m in r.metrics:
            if m.get("kind") == "train":
                train.append(m)
            elif m.get("kind") == "eval" and m.get("split") == split:
                it = m["iteration"]
                # (DPO+ samples once: only its first row has a training accuracy)
                window = [t for t in train if prev < t["iteration"] <= it and "train_reward" in t]
                kl = 0.0 if it == 0 else (train[-1].get("kl") if train else None)
                rows.append({"run": r.name, "algorithm": r.cfg["algorithm"], "label": r.cfg.get("label"),
                             "iteration": it, "acc": m["acc"], "kl": kl,
                             "train_acc": np.mean([t["train_reward"] for t in window]) if window else None})
                prev = it
    # the columns also without a row (an SFT-only sweep), so that the report's sections find none to show
    return pd.DataFrame(rows, columns=["run", "algorithm", "label", "iteration", "acc", "kl", "train_acc"])


def k_runs(runs: list[Run]) -> pd.DataFrame:
    """One row per finished VinePPO run: its K, final test accuracy and cost per iteration (seconds, MC rollouts,
    generated tokens); unfinished ones skipped with a warning."""
    rows = []
    for r in runs:
        cfg = r.cfg
        if cfg["algorithm"] != "vineppo":
            continue
        train = [m for m in r.metrics if m.get("kind") == "train"]
        test = [m for m in r.metrics if m.get("kind") == "eval" and m.get("split") == "test"
                and m["iteration"] == cfg["train"]["iterations"]]
        if not train or not test:
            warnings.warn(f"skipping {r.dir} in the K ablation: not finished")
            continue
        n = train[-1]["iteration"]
        rows.append({"run": r.name, "K": cfg["algo"]["K"], "acc": test[-1]["acc"], "s_per_it": train[-1]["wall_s"] / n,
                     "mc_s_per_it": sum(t["t_mc_rollouts"] for t in train) / n,
                     "rollouts_per_it": np.mean([t["mc_rollouts"] for t in train]),
                     "tokens_per_it": train[-1]["tokens_generated"] / n})
    return pd.DataFrame(rows)
