"""Check the GSM8K and MATH tasks on the full data: graders and step splitters.

    python -m harness.tasks.check /path/to/data          # a folder with gsm8k/ and math/ (e.g. shared/data)

Reports, per dataset and split: the share of gold solutions that grade correct against their own answer (misses
listed), the share of perturbed answers that grade wrong, and per step splitter (MATH: `authors`, `blocks`): steps
per solution (mean, max, > 25), whether every output re-joins to the solution, and on the test splits how often it
cuts a solution exactly as the authors' code does (harness/tasks/authors_steps.json holds their cuts of GSM8K-test and
MATH500), with boundary precision and recall. Exit status 1 if a splitter invariant fails (re-join; for `blocks`, no
boundary inside a math block). `--json FILE` also writes the numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

from harness import tasks
from harness.tasks.math_steps import SPLITTERS, protected_spans

AUTHORS_STEPS = Path(__file__).with_name("authors_steps.json")


def perturb(answer: str) -> str:
    """A wrong answer: an integer plus one; else its first digit changed (`(\\frac{1}{8}, \\frac{1}{2})` ->
    `(\\frac{2}{8}, \\frac{1}{2})`); else the expression plus one. (Changing the *last* digit instead exposes
    math-verify's leniencies: a base subscript `52_8` = `52_9`, a unit exponent `cm^2` = `cm^3`, and 6-digit
    rounding `.0000672` = `.0000673`; see docs/tasks.md "Real tasks".)"""
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


def cut_points(steps: list[str]) -> list[int]:
    out = [0]
    for s in steps:
        out.append(out[-1] + len(s))
    return out


def agreement(reference: dict, texts: list[str], steps: list[list[str]]) -> dict | None:
    """Share of solutions cut exactly as in `reference` ({sha1 prefix of the text: [id, cuts]}); boundary precision
    and recall. Texts the reference does not hold (another data version) are left out."""
    n = exact = hits = ours = theirs = 0
    for text, st in zip(texts, steps):
        ref = reference.get(hashlib.sha1(text.encode()).hexdigest()[:10])
        if ref is None:
            continue
        mine, gold = cut_points(st), ref[1]
        n += 1
        exact += mine == gold
        hits += len(set(mine[1:-1]) & set(gold[1:-1]))
        ours, theirs = ours + len(mine) - 2, theirs + len(gold) - 2
    if n == 0:
        return None
    return {"n": n, "exact": exact / n, "precision": hits / max(ours, 1), "recall": hits / max(theirs, 1)}


def splitters(name: str, task) -> dict:
    return dict(SPLITTERS) if name == "math" else {"lines": task.split_steps}


def check(name: str, data_dir: Path, splits=("train", "test")) -> dict:
    cls = tasks.get(name)
    task = cls(cls.Config(data_dir=str(data_dir / name), n_validation=1))   # train + validation = all
    reference = json.loads(AUTHORS_STEPS.read_text())["splits"]
    out = {}
    for split in splits:
        probs = task.problems(split) + (task.problems("validation") if split == "train" else [])
        t0 = time.perf_counter()
        gold = cls.grade_many([(task.sft_target(p), p["answer"]) for p in probs])
        t_gold = time.perf_counter() - t0
        wrong_resp = [("\n" + p["solution"][:p["solution"].rfind("####")] + "#### " + perturb(p["answer"])
                       if name == "gsm8k" else f"\\boxed{{{perturb(p['answer'])}}}") for p in probs]
        perturbed = cls.grade_many([(r, p["answer"]) for r, p in zip(wrong_resp, probs)])
        misses = [{"id": p["id"], "answer": p["answer"]} for p, g in zip(probs, gold) if g != 1.0]
        out[split] = {"n": len(probs), "gold_correct": sum(gold) / len(probs), "misses": misses,
                      "perturbed_wrong": 1 - sum(perturbed) / len(probs), "grade_s": round(t_gold, 2), "steps": {}}
        texts = [task.sft_target(p) for p in probs]
        for sname, split_steps in splitters(name, task).items():
            steps = [split_steps(t) for t in texts]
            n_steps = [len(s) for s in steps]
            out[split]["steps"][sname] = {
                "rejoin_exact": sum("".join(s) == t for s, t in zip(steps, texts)) / len(probs),
                # only `blocks` promises this (the authors' rules cut inside display math); GSM8K's "$" is money
                "boundary_in_math": sum(boundary_violations(s) > 0 for s in steps) if sname == "blocks" else 0,
                "steps_mean": round(statistics.mean(n_steps), 2), "steps_max": max(n_steps),
                "steps_over_25": sum(n > 25 for n in n_steps),
                "authors": agreement(reference.get(f"{name}/{split}", {}), texts, steps)}
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
                  f"{100 * s['perturbed_wrong']:.2f}%")
            for m in s["misses"][:20]:
                print(f"    miss {m['id']}: answer {m['answer']!r}")
            for sname, st in s["steps"].items():
                ag = st["authors"]
                same = (f"cut as the authors' code cuts: {100 * ag['exact']:.1f}% of {ag['n']} (boundary precision "
                        f"{ag['precision']:.3f}, recall {ag['recall']:.3f})" if ag else "no reference cuts")
                print(f"    splitter {sname}: steps/solution mean {st['steps_mean']} max {st['steps_max']} "
                      f"(> 25: {st['steps_over_25']}) | re-join exact {100 * st['rejoin_exact']:.1f}% | "
                      f"boundaries inside math: {st['boundary_in_math']} | {same}")
                ok &= st["rejoin_exact"] == 1.0 and st["boundary_in_math"] == 0
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
