"""Check the GSM8K and MATH tasks on the full data: graders and step splitters.

    python -m harness.tasks.check /path/to/data          # a folder with gsm8k/ and math/ (e.g. shared/data)

Reports, per dataset and split: the share of gold solutions that grade correct against their own answer (misses
listed), the share of perturbed answers that grade wrong, whether every splitter output re-joins to the solution
with no boundary inside a math block, and steps per solution (mean, max). Exit status 1 if a splitter invariant
fails. `--json FILE` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

from harness import tasks
from harness.tasks.math import protected_spans


def perturb(answer: str) -> str:
    """A wrong answer: an integer plus one; else its first digit changed (`(\\frac{1}{8}, \\frac{1}{2})` ->
    `(\\frac{2}{8}, \\frac{1}{2})`); else the expression plus one. (Changing the *last* digit instead exposes
    math-verify's leniencies: a base subscript `52_8` = `52_9`, a unit exponent `cm^2` = `cm^3`, and 6-digit
    rounding `.0000672` = `.0000673`; see README "Real tasks".)"""
    a = answer.replace(",", "").strip()
    if re.fullmatch(r"-?\d+", a):
        return str(int(a) + 1)
    m = re.search(r"\d", answer)
    if m:
        i = m.start()
        return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1:]
    return f"{answer}+1"


def boundary_violations(steps: list[str]) -> int:
    text = "".join(steps)
    spans = protected_spans(text)
    pos, bad = 0, 0
    for s in steps[:-1]:
        pos += len(s)
        bad += any(a < pos < b for a, b in spans)
    return bad


def check(name: str, data_dir: Path, splits=("train", "test")) -> dict:
    cls = tasks.get(name)
    task = cls(cls.Config(data_dir=str(data_dir / name), n_validation=1))   # train + validation = all
    out = {}
    for split in splits:
        probs = task.problems(split) + (task.problems("validation") if split == "train" else [])
        t0 = time.perf_counter()
        gold = cls.grade_many([(task.sft_target(p), p["answer"]) for p in probs])
        t_gold = time.perf_counter() - t0
        wrong_resp = [("\n" + p["solution"][:p["solution"].rfind("####")] + "#### " + perturb(p["answer"])
                       if name == "gsm8k" else f"\\boxed{{{perturb(p['answer'])}}}") for p in probs]
        perturbed = cls.grade_many([(r, p["answer"]) for r, p in zip(wrong_resp, probs)])
        steps = [cls.split_steps(task.sft_target(p)) for p in probs]
        n_steps = [len(s) for s in steps]
        rejoin = sum("".join(s) == task.sft_target(p) for s, p in zip(steps, probs))
        # GSM8K's "$" is a dollar sign, not math: the math-block check is MATH's
        inside = sum(boundary_violations(s) > 0 for s in steps) if name == "math" else 0
        misses = [{"id": p["id"], "answer": p["answer"]} for p, g in zip(probs, gold) if g != 1.0]
        out[split] = {"n": len(probs), "gold_correct": sum(gold) / len(probs), "misses": misses,
                      "perturbed_wrong": 1 - sum(perturbed) / len(probs), "grade_s": round(t_gold, 2),
                      "rejoin_exact": rejoin / len(probs), "boundary_in_math": inside,
                      "steps_mean": round(statistics.mean(n_steps), 2), "steps_max": max(n_steps),
                      "steps_over_25": sum(n > 25 for n in n_steps)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.tasks.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="folder holding gsm8k/{train,test}.jsonl and math/{train,test}.jsonl")
    p.add_argument("--tasks", default="gsm8k,math")
    p.add_argument("--json", default=None, help="also write the results to this file")
    a = p.parse_args(argv)
    results, ok = {}, True
    for name in a.tasks.split(","):
        results[name] = r = check(name, Path(a.data))
        for split, s in r.items():
            print(f"{name} {split}: {s['n']} problems | gold graded correct {100 * s['gold_correct']:.2f}% "
                  f"({len(s['misses'])} misses, {s['grade_s']} s) | perturbed graded wrong "
                  f"{100 * s['perturbed_wrong']:.2f}% | steps/solution mean {s['steps_mean']} max {s['steps_max']} "
                  f"(> 25: {s['steps_over_25']}) | re-join exact {100 * s['rejoin_exact']:.1f}% | "
                  f"boundaries inside math: {s['boundary_in_math']}")
            for m in s["misses"][:20]:
                print(f"    miss {m['id']}: answer {m['answer']!r}")
            ok &= s["rejoin_exact"] == 1.0 and s["boundary_in_math"] == 0
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
