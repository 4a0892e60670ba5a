"""Where a finished sweep's run time went: training, evaluation, and everything else (process start-up, imports,
model and task building, checkpoints, the final save), from the files the runs wrote.

    python benchmarks/overhead.py results/tiny

Per run: elapsed = status.json `finished` - job.json `submitted` (the last submission, so a resumed run counts its
last attempt only; process start-up and imports included), training = the last metrics row's `wall_s`, evaluation = its `eval_s`, other = the rest. Prints the
sums per algorithm and the share of the sweep's run-seconds spent outside training and evaluation.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.core.metrics import read_json, read_jsonl  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    a = p.parse_args()
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for d in sorted(p for p in Path(a.results).iterdir() if (p / "config.yaml").exists()):
        st = read_json(d / "status.json", {}) or {}
        rows = read_jsonl(d / "metrics.jsonl")
        if st.get("state") != "done" or not rows or "finished" not in st:
            continue
        algo = (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("algorithm", "?")
        t0 = (read_json(d / "job.json", {}) or {}).get("submitted") or st["started"]
        elapsed, train, ev = st["finished"] - t0, rows[-1]["wall_s"], rows[-1]["eval_s"]
        s = sums[algo]
        s[0] += 1
        s[1] += elapsed
        s[2] += train
        s[3] += ev
    if not sums:
        print(f"error: no finished run in {a.results}", file=sys.stderr)
        return 2
    print(f"{'algorithm':<10} {'runs':>4} {'elapsed s':>10} {'train s':>8} {'eval s':>7} {'other s':>8}  other share")
    tot = [0.0, 0.0, 0.0, 0.0]
    for algo, (n, el, tr, ev) in sorted(sums.items()):
        print(f"{algo:<10} {n:>4.0f} {el:>10.0f} {tr:>8.0f} {ev:>7.0f} {el - tr - ev:>8.0f}  {(el - tr - ev) / el:.0%}")
        tot = [x + y for x, y in zip(tot, (n, el, tr, ev))]
    n, el, tr, ev = tot
    print(f"{'all':<10} {n:>4.0f} {el:>10.0f} {tr:>8.0f} {ev:>7.0f} {el - tr - ev:>8.0f}  {(el - tr - ev) / el:.0%}"
          f"   (training {tr / el:.0%}, evaluation {ev / el:.0%} of the run-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
