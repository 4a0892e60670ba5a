"""An lm-eval (EleutherAI lm-evaluation-harness) task for any harness task: the same problems (written to a local
JSONL, so it runs offline and uses our validation carve), the paper's prompt and stop string, zero-shot, greedy, and
graded with the task's own grader, so lm-eval's number is comparable with the literature's tooling and with ours.

    run_lm_eval(model_dir, task, "test", out_dir, max_new_tokens=1024) -> {"acc": ..., ...}
"""
from __future__ import annotations

import json
from pathlib import Path

from harness import tasks


def task_config(task_name: str, split: str, data_file: Path, stop, max_new_tokens: int) -> dict:
    """The lm-eval task definition (a ConfigurableTask config, as a YAML task file would give)."""
    return {
        "task": f"vineppo_{task_name}_{split}",
        "dataset_path": "json",                         # HF datasets' JSON builder: a local file, no hub
        "dataset_kwargs": {"data_files": {"eval": str(data_file)}},
        "test_split": "eval",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "process_results": process_results,
        "generation_kwargs": {"until": list(stop), "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": max_new_tokens},
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "num_fewshot": 0,
        "repeats": 1,
        "metadata": {"version": 1.0},
    }


def process_results(doc: dict, results: list[str]) -> dict:
    """lm-eval calls this per document with the generated text (already cut at the stop string)."""
    return {"acc": tasks.get(doc["task"]).grade(results[0], doc["answer"])}


def run_lm_eval(model_dir: Path, task, split: str, out_dir: Path, max_new_tokens: int, max_problems: int | None = None,
                batch_size: int = 8, device: str = "cpu") -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    problems = task.problems(split)[:max_problems]
    data = out_dir / f"lm_eval_{task.name}_{split}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    with open(data, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"id": p["id"], "task": task.name, "prompt": task.prompt(p), "answer": p["answer"]},
                               ensure_ascii=False) + "\n")
    lm_task = ConfigurableTask(config=task_config(task.name, split, data, task.stop, max_new_tokens))
    # BOS first, as our engines encode prompts (harness/runtime/engines/hf.py)
    lm = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size, add_bos_token=True)
    res = simple_evaluate(model=lm, tasks=[lm_task], log_samples=False, bootstrap_iters=0,
                          task_manager=_empty_task_manager())
    metrics = res["results"][lm_task.config.task]
    return {"acc": metrics["acc,none"], "n_problems": len(problems), "split": split, "task": task.name,
            "lm_eval_task": lm_task.config.task, "lm_eval_version": res.get("lm_eval_version"),
            "samples": 1, "temperature": 0.0, "max_new_tokens": max_new_tokens}


def _empty_task_manager():
    """simple_evaluate would otherwise index lm-eval's thousands of bundled task files (slow, not needed)."""
    from lm_eval.tasks import TaskManager
    try:
        return TaskManager(include_defaults=False)
    except TypeError:                                   # older lm-eval
        return None
