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

from harness import gate, plot
from harness.config import load_sweep
from harness.metrics import read_json


def claims(results: Path, min_gain: float) -> list[tuple[str, bool | None, str]]:
    """(claim, passed: True/False, or None for a claim only reported, numbers)."""
    out: list[tuple[str, bool | None, str]] = []
    runs = sorted(p for p in results.iterdir() if p.is_dir() and (p / "config.yaml").exists())
    if (results / "sweep.yaml").exists():          # the sweep as last submitted: other run folders are stale
        ids = {r.id for r in load_sweep(results / "sweep.yaml")[1]}
        stale = [p.name for p in runs if p.name not in ids]
        runs = [results / i for i in sorted(ids)]
        if stale:
            out.append((f"{len(stale)} run folders not in {results / 'sweep.yaml'} are ignored", None,
                        ", ".join(stale)))
    states = {p.name: (read_json(p / "status.json", {}) or {}).get("state", "new") for p in runs}
    bad = {k: v for k, v in states.items() if v != "done"}
    out.append((f"all {len(runs)} runs are done", bool(runs) and not bad,
                ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "none failed, blocked or missing"))
    cfgs = {p.name: (yaml.safe_load((p / "config.yaml").read_text()) if (p / "config.yaml").exists() else None)
            or {} for p in runs}
    gates = {}
    for p in runs:
        m = cfgs[p.name].get("model") or {}
        if m.get("init_run") and m.get("init_require"):
            gates[(m["init_run"], yaml.safe_dump(m["init_require"]))] = m["init_require"]
    for (start, _), g in gates.items():
        why = gate.check(results / start, g)
        row = gate.final_eval(results / start, g["split"]) or {}
        got = ", ".join(f"{g['split']} {k} {row[k]:.3f}" for k in gate.gate_bars(g) if k in row)
        out.append((f"start {start} passed its gate ({gate.describe(g)})", why is None, why or got))
    df = plot.load(results)
    df = df[df.run.isin([p.name for p in runs])] if not df.empty else df
    test = plot.final_rows(df, "test") if not df.empty else df
    sft = test[test.algorithm == "sft"] if not test.empty else test
    if sft.empty:
        out.append(("the sweep has an SFT start evaluated on test", False, "no finished SFT run with a test row"))
        return out
    start = plot.start_point(test)["acc"]
    for lab in plot.label_order(test[test.algorithm != "sft"].label):
        g = test[test.label == lab]
        mean = float(g.acc.mean())
        out.append((f"{plot.display(lab)} improves on the SFT start by >= {min_gain:g} (test, T = sampling temp.)",
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
    for p in runs:                              # each run's last analysed snapshot (harness.analyze values)
        for f in sorted((p / "analysis" / "values").glob("iter_*.json"))[-1:]:
            r = read_json(f, {}) or {}
            if r.get("mae") is not None:
                mae.setdefault(cfgs[p.name].get("algorithm"), []).append(r["mae"])
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


if __name__ == "__main__":
    sys.exit(main())
