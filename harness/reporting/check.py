"""Check a finished sweep against the claims the README makes of it; exit 1 when an asserted claim fails.

    python -m harness.check results/tiny [--min-gain 0.05]

Asserted (each printed with its numbers and PASS/FAIL):
  - every run of the sweep is done (none failed, blocked or missing);
  - every start gate (a group's `require:`) was passed by its start;
  - every RL method's mean test accuracy over seeds is at least `--min-gain` above the SFT start's.
Printed, not asserted (measured, but too noisy to assert with 3 seeds): VinePPO vs PPO at equal iterations, and the
value analysis's MAE ratio when `harness.analyze values` has been run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from harness.core import gate
from harness.core.metrics import read_json
from harness.reporting import runs as R
from harness.reporting.style import display, label_order
from harness.reporting.table import final_rows, start_point


def claims(results: Path, min_gain: float) -> list[tuple[str, bool | None, str]]:
    """(claim, passed: True/False, or None for a claim only reported, numbers)."""
    out: list[tuple[str, bool | None, str]] = []
    folders = R.scan(results)
    runs = folders
    ids = read_json(results / "runs.json")          # the sweep as last submitted: other run folders are stale
    if ids is not None:
        ids = set(ids)
        stale = [r.name for r in folders if r.name not in ids]
        found = {r.name: r for r in folders}
        runs = [found.get(i) or R.read(results / i) for i in sorted(ids)]     # a missing folder: a run never made
        if stale:
            out.append((f"{len(stale)} run folders not in {results / 'runs.json'} are ignored", None,
                        ", ".join(stale)))
    states = {r.name: r.status.get("state", "new") for r in runs}
    bad = {k: v for k, v in states.items() if v != "done"}
    out.append((f"all {len(runs)} runs are done", bool(runs) and not bad,
                ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "none failed, blocked or missing"))
    cfgs = {r.name: r.cfg or {} for r in runs}
    gates = {}
    for r in runs:
        m = cfgs[r.name].get("model") or {}
        if m.get("init_run") and m.get("init_require"):
            gates[(m["init_run"], yaml.safe_dump(m["init_require"]))] = m["init_require"]
    for (start, _), g in gates.items():
        why = gate.check(results / start, g)
        row = gate.final_eval(results / start, g["split"]) or {}
        got = ", ".join(f"{g['split']} {k} {row[k]:.3f}" for k in gate.gate_bars(g) if k in row)
        out.append((f"start {start} passed its gate ({gate.describe(g)})", why is None, why or got))
    df = R.evals(folders)                        # labels as in table.md: told apart among all the folders
    df = df[df.run.isin([r.name for r in runs])] if not df.empty else df
    test = final_rows(df, "test") if not df.empty else df
    sft = test[test.algorithm == "sft"] if not test.empty else test
    if sft.empty:
        out.append(("the sweep has an SFT start evaluated on test", False, "no finished SFT run with a test row"))
        return out
    start = start_point(test)["acc"]
    for lab in label_order(test[test.algorithm != "sft"].label):
        g = test[test.label == lab]
        mean = float(g.acc.mean())
        out.append((f"{display(lab)} improves on the SFT start by >= {min_gain:g} (test, T = sampling temp.)",
                    mean - start >= min_gain,
                    f"{mean:.3f} (n={len(g)}) vs start {start:.3f}: {mean - start:+.3f}"))
    val = df[(df.split == "validation") & (df.state == "done")]
    vine, ppo = val[val.algorithm == "vineppo"], val[val.algorithm == "ppo"]
    if len(vine) and len(ppo):
        common = sorted(set(vine.iteration) & set(ppo.iteration) - {0})
        pts = [f"it {i}: {vine[vine.iteration == i].acc.mean():.3f} vs {ppo[ppo.iteration == i].acc.mean():.3f}"
               for i in common]
        out.append(("VinePPO vs PPO at equal iterations (validation, mean over seeds)", None, "; ".join(pts)))
    mae: dict[str, list[float]] = {}
    for r in runs:                              # each run's last analysed snapshot (`harness.analyze values`)
        cache = R.load_cache(r.dir)
        if cache and cache[max(cache)]["mae"] is not None:
            mae.setdefault(cfgs[r.name].get("algorithm"), []).append(cache[max(cache)]["mae"])
    if mae.get("ppo") and mae.get("vineppo"):
        v, q = sum(mae["vineppo"]) / len(mae["vineppo"]), sum(mae["ppo"]) / len(mae["ppo"])
        out.append(("value MAE vs MC ground truth, VinePPO / PPO", None, f"{v:.3f} / {q:.3f} = {v / q:.2f}x"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a finished sweep's results directory, e.g. results/tiny")
    p.add_argument("--min-gain", type=float, default=0.05, help="least gain of every RL method over the SFT start")
    a = p.parse_args(argv)
    results = Path(a.results)
    if not results.is_dir():
        print(f"error: {results} is not a directory", file=sys.stderr)
        return 2
    rows = claims(results, a.min_gain)
    for claim, ok, numbers in rows:
        print(f"{'PASS' if ok else 'FAIL' if ok is False else 'INFO'}  {claim}: {numbers}")
    failed = [c for c, ok, _ in rows if ok is False]
    print(f"{len(rows) - len(failed)} of {len(rows)} claims hold" + (f"; {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0
