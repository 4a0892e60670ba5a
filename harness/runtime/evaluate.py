"""Evaluation protocol: mean accuracy over `samples` sampled solutions per problem at the eval temperature (the
paper's pass@1 estimate: 16 samples, T = 0.35, top-p 0.9), pass@n, and greedy accuracy. Used by the run loop, by
RestEM's checkpoint selection and by `python -m harness.evaluate` (harness/train/evaluate.py)."""
from __future__ import annotations

import time

from harness.core.seeding import derive_seed
from harness.tasks import grade_samples


def evaluate(engine, task, split: str, ecfg, max_new_tokens: int, seed: int, tag: str = "eval") -> dict:
    """`tag` names the engine clock the generation time and tokens go to: "eval" is dropped by the run loop,
    any other tag (e.g. RestEM's checkpoint selection) is counted as training cost."""
    problems = task.problems(split)[:ecfg.max_problems]
    prompts = [engine.encode_prompt(task.prompt(p)) for p in problems]
    t0 = time.perf_counter()
    out = {"split": split, "n_problems": len(problems), "samples": ecfg.samples, "temperature": ecfg.temperature}
    samples = engine.generate(prompts, n=ecfg.samples, temperature=ecfg.temperature, top_p=ecfg.top_p,
                              max_new_tokens=max_new_tokens, stop=task.stop, seed=derive_seed(seed, split, "eval"),
                              tag=tag)
    correct = grade_samples(task, samples, problems)
    per_problem = [correct[i * ecfg.samples:(i + 1) * ecfg.samples] for i in range(len(problems))]
    out["acc"] = sum(correct) / max(len(correct), 1)
    out["pass_at_n"] = sum(max(c) for c in per_problem) / max(len(problems), 1)
    if ecfg.greedy:
        g = engine.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=task.stop, tag=tag)
        out["acc_greedy"] = sum(grade_samples(task, g, problems)) / max(len(problems), 1)
    out["t_eval"] = time.perf_counter() - t0
    return out

