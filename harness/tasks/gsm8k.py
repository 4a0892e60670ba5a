"""GSM8K (Cobbe et al. 2021) as the paper used it.

Data: `openai/gsm8k` (config `main`) from the HF hub, or `task.data_dir` holding the raw train.jsonl / test.jsonl
(fields question, answer; e.g. shared/data/gsm8k). Splits: test = the 1,319 test problems; the 7,473 train problems
are split by a seeded shuffle (`task.split_seed`) into 7,100 train + 373 validation, the sizes the authors used
(their own split ships only in their release archive, so ours is a different draw of the same size).
Solutions: the calculator notes `<<48/2=24>>` are removed (as the authors did); they end in `#### <answer>`.
Steps: one per line; the final `#### N` line joins the last step; whitespace-only lines join the next step.
Grade: the text after the last `####` equals the gold answer (commas removed; numerically equal also counts).
"""
from __future__ import annotations

import re

from pydantic import Field

from harness.tasks import register
from harness.tasks.common import DataConfig, PaperTask, local_rows
from harness.tasks.grader import gsm8k_answer, gsm8k_equal

_CALC = re.compile(r"<<[^<>]*>>")


def clean_solution(answer_field: str) -> str:
    return _CALC.sub("", answer_field)


def to_problem(row: dict, pid: str) -> dict:
    solution = clean_solution(row["answer"])
    gold = gsm8k_answer(solution)
    return {"id": pid, "question": row["question"], "solution": solution, "answer": (gold or "").replace(",", "")}


@register("gsm8k")
class GSM8K(PaperTask):
    class Config(DataConfig):
        name: str = "gsm8k"
        n_validation: int = Field(373, ge=1, description="carved from the 7,473 train problems (paper: 373)")

    _problem = staticmethod(to_problem)

    def _rows(self, split: str) -> list[dict]:
        if self.cfg.data_dir:
            return local_rows(self.cfg.data_dir, split, "gsm8k")
        from datasets import load_dataset
        return list(load_dataset("openai/gsm8k", "main", split=split))

    @staticmethod
    def split_steps(response: str) -> list[str]:
        """Lines, each later one starting with its "\\n" (the authors' `gsm8k_orig_format`)."""
        parts = re.split(r"(?=\n)", response)
        steps: list[str] = []
        carry = ""
        for p in parts:
            if not p.strip():                      # empty / whitespace-only: joins the next step
                carry += p
                continue
            if steps and p.lstrip().startswith("####"):
                steps[-1] += carry + p             # the answer line belongs to the last reasoning step
            else:
                steps.append(carry + p)
            carry = ""
        if carry:
            if steps:
                steps[-1] += carry
            else:
                steps.append(carry)
        return steps or [response]

    @staticmethod
    def grade(response: str, answer: str) -> float:
        return float(gsm8k_equal(gsm8k_answer(response), answer))

    @staticmethod
    def grade_many(pairs: list[tuple[str, str]]) -> list[float]:
        return [GSM8K.grade(r, a) for r, a in pairs]
