"""The tiny SFT start across seeds and thread counts: does every one learn the task, and with what margin?

    python -m harness.sweep experiments/sft_robustness.yaml --only 'sft-threads1-*' --workers 2
    python -m harness.sweep experiments/sft_robustness.yaml --only 'sft-threads2-*' --workers 1
    python benchmarks/sft_robustness.py results/sft_robustness [--bar 0.95]

Prints one markdown row per run (seed x threads): final greedy accuracy on validation and test, T = 1 test accuracy,
the first evaluated step at which greedy validation accuracy reached the bar (and its share of the budget), and
exits 1 when a run missed the bar at its end or passed it later than 70% of its budget.
"""
import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.core.metrics import read_jsonl  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--bar", type=float, default=0.95)
    a = ap.parse_args()
    rows, bad = [], 0
    for d in sorted(Path(a.results).glob("*/config.yaml")):
        cfg = yaml.safe_load(d.read_text())
        ev = [r for r in read_jsonl(d.parent / "metrics.jsonl") if r.get("kind") == "eval"]
        n = cfg["train"]["iterations"]
        final = {r["split"]: r for r in ev if r["iteration"] == n}
        if set(final) < {"validation", "test"}:
            print(f"{d.parent.name}: not finished", file=sys.stderr)
            bad += 1
            continue
        hit = next((r["iteration"] for r in ev if r["split"] == "validation" and r["acc_greedy"] >= a.bar), None)
        ok = min(final["validation"]["acc_greedy"], final["test"]["acc_greedy"]) >= a.bar and hit is not None \
            and hit <= 0.7 * n + 1e-9
        bad += not ok
        rows.append((cfg["seed"], cfg["threads"], cfg["train"]["precision"], final["validation"]["acc_greedy"],
                     final["test"]["acc_greedy"], final["test"]["acc"], hit, n, ok))
    print(f"| seed | threads | precision | greedy val | greedy test | T=1 test | val greedy >= {a.bar} at step | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for s, t, p, gv, gt, t1, hit, n, ok in sorted(rows, key=lambda r: (r[1], r[0])):
        at = f"{hit} ({hit / n:.0%} of {n})" if hit is not None else "never"
        print(f"| {s} | {t} | {p} | {gv:.3f} | {gt:.3f} | {t1:.3f} | {at} | {'yes' if ok else '**no**'} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
