"""MATH (Hendrycks et al. 2021) in the PRM800K split (Lightman et al. 2023), as the paper used it.

Data: `task.data_dir` holding train.jsonl / test.jsonl in the PRM800K `math_splits` format (fields problem,
solution, answer, subject, level, unique_id; e.g. shared/data/math), or from the HF hub: test =
`HuggingFaceH4/MATH-500`; train = every problem of `EleutherAI/hendrycks_math` (all 7 subjects, train and test)
whose text is not in MATH-500: the 12,000-problem PRM800K train split. Validation: 500 problems carved from train
by a seeded shuffle (`task.split_seed`), leaving 11,500 (the authors' sizes; their own draw is not public).
Grade: the last `\\boxed{}` of the response against the gold answer (harness/tasks/grader.py: Minerva
normalisation, then math-verify in a worker pool with a timeout). No `\\boxed{}`: 0.
Steps: `task.splitter` (harness/tasks/math_steps.py): the authors' rules by default, or never inside math.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.tasks import register
from harness.tasks.common import DataConfig, PaperTask, local_rows
from harness.tasks.grader import is_equiv_many, last_boxed
from harness.tasks.math_steps import SPLITTERS

SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
            "prealgebra", "precalculus")

@register("math")
class MATH(PaperTask):
    class Config(DataConfig):
        name: str = "math"
        n_validation: int = Field(500, ge=1, description="carved from the 12,000 train problems (paper: 500)")
        splitter: Literal["authors", "blocks"] = Field(
            "authors", description="VinePPO's step states: `authors` = the rules of the authors' "
            "split_solution_inplace (the paper's states, ~10 per MATH500 solution); `blocks` = never inside a math "
            "block (~6); see harness/tasks/math_steps.py")

    @staticmethod
    def _problem(row: dict, pid: str) -> dict:                # (the data's own unique_id is the id)
        answer = row.get("answer")
        if answer is None:
            answer = last_boxed(row["solution"]) or ""
        return {"id": row["unique_id"], "question": row["problem"], "solution": row["solution"], "answer": answer,
                "subject": row.get("subject"), "level": row.get("level")}

    def _rows(self, split: str) -> list[dict]:
        if self.cfg.data_dir:
            return local_rows(self.cfg.data_dir, split, "math")
        from datasets import load_dataset
        test = list(load_dataset("HuggingFaceH4/MATH-500", split="test"))
        if split == "test":
            return test
        # PRM800K train = all of MATH (train + test) minus MATH-500, matched on the problem text.
        held_out = {r["problem"].strip() for r in test}
        rows = []
        for subject in SUBJECTS:
            for s in ("train", "test"):
                for i, r in enumerate(load_dataset("EleutherAI/hendrycks_math", subject, split=s)):
                    if r["problem"].strip() not in held_out:
                        rows.append({"problem": r["problem"].strip(), "solution": r["solution"],
                                     "answer": last_boxed(r["solution"]) or "", "subject": r["type"],
                                     "level": r["level"], "unique_id": f"{s}/{subject}/{i}"})
        return rows

    def split_steps(self, text: str) -> list[str]:
        return SPLITTERS[self.cfg.splitter](text)

    @staticmethod
    def grade(response: str, answer: str) -> float:
        return MATH.grade_many([(response, answer)])[0]

    @staticmethod
    def grade_many(pairs: list[tuple[str, str]]) -> list[float]:
        return [float(x) for x in is_equiv_many([(last_boxed(r), a) for r, a in pairs])]
