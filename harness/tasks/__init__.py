"""Task registry. A task knows its data, prompt format, step splitter and grader:

    class Task:
        Config: type[pydantic.BaseModel]          # options under `task:` in the YAML (besides `name`)
        stop: tuple[str, ...]                      # stop strings for generation (EOS always stops)
        def problems(self, split) -> list[dict]    # dicts with at least id, question, answer
        def prompt(self, problem) -> str
        def sft_target(self, problem, rng) -> str  # demonstration the SFT stage trains on
        def split_steps(self, response) -> list[str]   # "".join(steps) == response, exactly
        @staticmethod
        def grade(response, answer) -> float       # 1.0 correct, 0.0 otherwise
        grade_many(pairs) -> list[float]           # optional: a batch at once (MATH: a worker pool)

`get(name)` returns the class; `get(name).grade(response, answer)` works without building the task.
Tasks: arithmetic (the embedded tiny task), gsm8k, math (harness/tasks/{gsm8k,math}.py; grader.py, common.py).
"""
from __future__ import annotations

import importlib

_MODULES = {"arithmetic": "harness.tasks.arithmetic", "gsm8k": "harness.tasks.gsm8k", "math": "harness.tasks.math"}
_TASKS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        _TASKS[name] = cls
        cls.name = name
        return cls
    return deco


def names() -> list[str]:
    return sorted(set(_MODULES) | set(_TASKS))


def get(name: str):
    if name not in _TASKS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(names())}")
    return _TASKS[name]


def grade_many(task, pairs: list[tuple[str, str]]) -> list[float]:
    """Grades of (response, answer) pairs through the task's batched grader when it has one."""
    if not pairs:
        return []
    if hasattr(task, "grade_many"):
        return list(task.grade_many(pairs))
    return [task.grade(r, a) for r, a in pairs]


def grade_samples(task, samples, problems: list[dict]) -> list[float]:
    """0/1 per sample against its problem's answer; an unfinished sample (cut at the token budget) is 0, not graded:
    the rule for training rewards and evaluation alike."""
    done = [i for i, s in enumerate(samples) if s.finished]
    out = [0.0] * len(samples)
    for i, g in zip(done, grade_many(task, [(samples[i].text, problems[samples[i].prompt_index]["answer"])
                                            for i in done])):
        out[i] = g
    return out
