"""MATH (Hendrycks et al. 2021) in the PRM800K split (Lightman et al. 2023), as the paper used it.

Data: `task.data_dir` holding train.jsonl / test.jsonl in the PRM800K `math_splits` format (fields problem,
solution, answer, subject, level, unique_id; e.g. shared/data/math), or from the HF hub: test =
`HuggingFaceH4/MATH-500`; train = every problem of `EleutherAI/hendrycks_math` (all 7 subjects, train and test)
whose text is not in MATH-500: the 12,000-problem PRM800K train split. Validation: 500 problems carved from train
by a seeded shuffle (`task.split_seed`), leaving 11,500 (the authors' sizes; their own draw is not public).
Grade: the last `\\boxed{}` of the response against the gold answer (harness/tasks/grader.py: Minerva
normalisation, then math-verify in a worker pool with a timeout). No `\\boxed{}`: 0.
Steps: a LaTeX-aware heuristic after the authors' `math_extract_steps_inplace.py`, see `split_steps`.
"""
from __future__ import annotations

import bisect
import re

from pydantic import Field

from harness.tasks import register
from harness.tasks.common import DataConfig, PaperTask, local_rows
from harness.tasks.grader import is_equiv_many, last_boxed

SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
            "prealgebra", "precalculus")

# Math blocks a step boundary must never cut, leftmost first; at one position the first alternative wins.
_BLOCK = re.compile(r"""
    \[asy\][\s\S]*?\[/asy\]                           # Asymptote figures
  | \\begin\{(?P<env>[^}]*)\}[\s\S]*?\\end\{(?P=env)\}  # environments (align, tabular, ...)
  | \$\$[\s\S]*?\$\$                                  # $$ display $$
  | \\\[[\s\S]*?\\\]                                  # \[ display \]
  | \\\([\s\S]*?\\\)                                  # \( inline \)
  | (?<!\\)\$(?:\\[\s\S]|[^\\$])*\$                   # $ inline $ (\$ is a dollar sign, not math)
""", re.X)
_SENTENCE_END = re.compile(r"\.(?=\s+[A-Z])")          # a period, whitespace, a capital letter
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Dr|St|cf))$")
_PROSE_BREAK = re.compile(r", |: | and | to ")
MIN_LEN, MAX_LEN, MIN_SIDE = 20, 100, 40


def protected_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _BLOCK.finditer(text)]


def _inside(spans: list[tuple[int, int]], starts: list[int], p: int) -> bool:
    i = bisect.bisect_right(starts, p - 1) - 1             # last span starting before p
    return i >= 0 and spans[i][0] < p < spans[i][1]


def split_steps(text: str) -> list[str]:
    """Steps of a MATH solution; "".join(steps) == text, and no boundary falls inside a math block.
    1. boundaries at every newline (it starts the next step) and after sentence-ending periods (also a period
       closing a math block, `.$`), never inside a math block;
    2. parts shorter than 20 characters (whitespace-only ones always) merge into the next part, unless they end
       a sentence; a short tail merges into the previous one;
    3. parts longer than 100 characters break at the prose delimiter (", ", ": ", " and ", " to ") nearest their
       middle with >= 40 characters on each side, recursively.
    Differences from the authors' splitter: no breaks at newlines or operators *inside* display math (a boundary
    there would cut a block), and no abbreviation list beyond a few common ones."""
    spans = protected_spans(text)
    starts = [s for s, _ in spans]
    cuts = {m.start() for m in re.finditer(r"\n", text)}
    cuts |= {m.end() for m in _SENTENCE_END.finditer(text) if not _ABBREV.search(text[:m.start()])}
    cuts |= {e for s, e in spans if re.match(r"\s+[A-Z]", text[e:]) and re.search(r"\.(\$\$?|\\[\])])$", text[s:e])}
    cuts = sorted(c for c in cuts if 0 < c < len(text) and not _inside(spans, starts, c))
    bounds = [0] + cuts + [len(text)]
    parts = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    merged: list[tuple[int, int]] = []
    pending = None
    for s, e in parts:
        if pending is not None:
            s = pending
        chunk = text[s:e]
        if not chunk.strip() or (len(chunk.strip()) < MIN_LEN and not re.search(r"\.(\$\$?|\\[\])])?\s*$", chunk)):
            pending = s
            continue
        merged.append((s, e))
        pending = None
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], len(text))
        else:
            merged.append((pending, len(text)))
    out: list[tuple[int, int]] = []
    for s, e in merged:
        out += _break_long(text, s, e, spans, starts)
    return [text[s:e] for s, e in out] or [text]


def _break_long(text, s, e, spans, starts) -> list[tuple[int, int]]:
    if e - s <= MAX_LEN:
        return [(s, e)]
    mid = (s + e) / 2
    best = None
    for m in _PROSE_BREAK.finditer(text, s, e):
        p = m.end() if m.group() in (", ", ": ") else m.start()   # ", " ends a piece; " and " starts one
        if p - s >= MIN_SIDE and e - p >= MIN_SIDE and not _inside(spans, starts, p):
            if best is None or abs(p - mid) < abs(best - mid):
                best = p
    if best is None:
        return [(s, e)]
    return _break_long(text, s, best, spans, starts) + _break_long(text, best, e, spans, starts)


@register("math")
class MATH(PaperTask):
    class Config(DataConfig):
        name: str = "math"
        n_validation: int = Field(500, ge=1, description="carved from the 12,000 train problems (paper: 500)")

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

    split_steps = staticmethod(split_steps)

    @staticmethod
    def grade(response: str, answer: str) -> float:
        return MATH.grade_many([(response, answer)])[0]

    @staticmethod
    def grade_many(pairs: list[tuple[str, str]]) -> list[float]:
        return [float(x) for x in is_equiv_many([(last_boxed(r), a) for r, a in pairs])]
