"""Evaluation protocol: mean accuracy over `samples` sampled solutions per problem at the eval temperature (the
paper's pass@1 estimate: 16 samples, T = 0.35, top-p 0.9), pass@n, and greedy accuracy.

    python -m harness.evaluate RUN_DIR [--split test] [--samples N] [--max-problems N] [--lm-eval]

evaluates a finished run's final/ checkpoint outside training: our protocol (written to RUN_DIR/eval_<split>.json)
and, with --lm-eval, lm-eval's generate-until on the same problems, greedy, graded by the same grader
(RUN_DIR/lm_eval.json; harness/tasks/lm_eval_task.py). Both files are written atomically, and harness.plot's table
shows them next to the accuracy the run logged.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from algorithms.base import derive_seed


def _grades(task, samples, problems) -> list[float]:
    """0/1 per sample (unfinished = 0), through the task's batched grader."""
    from harness.tasks import grade_many
    done = [i for i, s in enumerate(samples) if s.finished]
    out = [0.0] * len(samples)
    for i, g in zip(done, grade_many(task, [(samples[i].text, problems[samples[i].prompt_index]["answer"])
                                            for i in done])):
        out[i] = g
    return out


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
    correct = _grades(task, samples, problems)
    per_problem = [correct[i * ecfg.samples:(i + 1) * ecfg.samples] for i in range(len(problems))]
    out["acc"] = sum(correct) / max(len(correct), 1)
    out["pass_at_n"] = sum(max(c) for c in per_problem) / max(len(problems), 1)
    if ecfg.greedy:
        g = engine.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=task.stop, tag=tag)
        out["acc_greedy"] = sum(_grades(task, g, problems)) / max(len(problems), 1)
    out["t_eval"] = time.perf_counter() - t0
    return out


def evaluate_run(run_dir: Path, split: str = "test", samples: int | None = None, max_problems: int | None = None,
                 lm_eval: bool = False, max_new_tokens: int | None = None, threads: int | None = None) -> dict:
    """Evaluate RUN_DIR/final with the run's own task and eval settings (overridable); returns what was written."""
    import torch

    from harness import engines, models, tasks
    from harness.config import load_run_config
    from harness.metrics import atomic_write

    cfg = load_run_config(run_dir / "config.yaml")
    final = run_dir / "final"
    if not (final / "config.json").exists():
        raise FileNotFoundError(f"{run_dir}: no final checkpoint ({final}/config.json); has the run finished?")
    if threads:
        torch.set_num_threads(threads)
    task_cls = tasks.get(cfg.task["name"])
    task = task_cls(task_cls.Config(**cfg.task))
    if split not in ("train", "validation", "test"):
        raise ValueError(f"--split {split!r}: expected train, validation or test")
    ecfg = cfg.eval.model_copy(update={k: v for k, v in (("samples", samples), ("max_problems", max_problems))
                                       if v is not None})
    budget = max_new_tokens or cfg.sampling.max_new_tokens
    mcfg = cfg.model.model_copy(update={"init_run": None, "hub": None, "gguf_package": None, "gguf_file": None,
                                        "path": str(final)})
    tok, model = models.load(mcfg, seed=cfg.seed)
    model.eval()
    engine = engines.build(cfg.model_copy(update={"progress": False}), model, tok)
    written = {}
    res = evaluate(engine, task, split, ecfg, budget, seed=derive_seed(cfg.seed, "evaluate_cli"))
    res.update(run=run_dir.name, checkpoint="final", task=task.name, max_new_tokens=budget)
    atomic_write(run_dir / f"eval_{split}.json", json.dumps(res, indent=1) + "\n")
    written[f"eval_{split}.json"] = res
    if lm_eval:
        from harness.tasks.lm_eval_task import run_lm_eval
        device = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        le = run_lm_eval(final, task, split, run_dir / "lm_eval_data", budget, ecfg.max_problems, device=device)
        le["t_eval"] = time.perf_counter() - t0
        atomic_write(run_dir / "lm_eval.json", json.dumps(le, indent=1) + "\n")
        written["lm_eval.json"] = le
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory with config.yaml and final/ (made by harness.sweep)")
    p.add_argument("--split", default="test", help="train, validation or test (default: test)")
    p.add_argument("--samples", type=int, default=None, help="samples per problem (default: the run's eval.samples)")
    p.add_argument("--max-problems", type=int, default=None, help="first N problems (default: the run's setting)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's sampling.max_new_tokens")
    p.add_argument("--lm-eval", action="store_true", help="also run lm-eval on final/ (greedy, same grader)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir)
    if not (run_dir / "config.yaml").exists():
        print(f"error: {run_dir} has no config.yaml (not a run directory)", file=sys.stderr)
        return 2
    try:
        written = evaluate_run(run_dir, a.split, a.samples, a.max_problems, a.lm_eval, a.max_new_tokens, a.threads)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in written.items():
        extra = f", greedy {r['acc_greedy']:.3f}" if "acc_greedy" in r else ""
        print(f"{run_dir / name}: acc {r['acc']:.4f}{extra} on {r['n_problems']} {r['split']} problems "
              f"({r.get('samples', 1)} samples, {r['t_eval']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
