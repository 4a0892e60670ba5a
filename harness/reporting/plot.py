"""Regenerate figures and tables from what runs wrote (config.yaml + metrics.jsonl), nothing else.

    python -m harness.plot results/tiny

writes into the results directory:
  results.csv                  tidy: one row per run x evaluation point
  table.md                     per method: final test accuracy (mean +- 95% CI over seeds), greedy accuracy,
                               grad steps and wall-clock to reach PPO's best validation accuracy
  accuracy_vs_iteration.png    accuracy vs training iteration       (mean line, band = +-1 SD over seeds)
  accuracy_vs_wallclock.png    accuracy vs training wall-clock seconds (evaluation excluded)
  accuracy_vs_compute.png      accuracy vs estimated training FLOPs (2N per inference token, 6N per trained token)
  --report                     also report.md and the analysis figures (see harness/reporting/report.py)
Runs are told apart by their whole config but the seed (a grid's points are separate rows, never seeds of one);
every run left out of the table or the curves is named with the reason, on stderr and at the end of table.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.reporting import report, runs
from harness.reporting.figures import plot_axis
from harness.reporting.table import table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results directory, e.g. results/tiny")
    p.add_argument("--split", default=None, help="split for the curves (default: the one evaluated most often)")
    p.add_argument("--report", action="store_true", help="also write report.md with the value analysis, KL and "
                                                         "train-vs-test figures, K ablation, paper vs ours "
                                                         "(harness/reporting/report.py)")
    a = p.parse_args(argv)
    results = Path(a.results)
    if not results.is_dir():
        print(f"error: {results} is not a directory", file=sys.stderr)
        return 2
    scanned = runs.scan(results)
    df = runs.evals(scanned)
    if df.empty:
        print(f"error: no run in {results} has evaluation rows", file=sys.stderr)
        return 2
    df.to_csv(results / "results.csv", index=False)
    rl = df[df.algorithm != "sft"]
    split = a.split or (rl if len(rl) else df).split.value_counts().idxmax()   # an SFT-only sweep plots too
    plot_axis(df, split, "iteration", "training iteration", results / "accuracy_vs_iteration.png")
    plot_axis(df, split, "wall_s", "training wall-clock (s, evaluation excluded)",
              results / "accuracy_vs_wallclock.png")
    plot_axis(df, split, "flops", "estimated training FLOPs (2N/inference token + 6N/trained token)",
              results / "accuracy_vs_compute.png", logx=True)
    md = table(df)
    (results / "table.md").write_text(md)
    print(md)
    print(f"wrote results.csv, table.md and 3 figures ({split} curves) to {results}")
    if a.report:
        print(f"wrote {report.write(results, df, split, md, scanned)}")
    return 0
