"""What GSM8K and MATH share: the paper's prompt and stop string, data loading and the validation carve.

Prompt (train and eval, both datasets; the authors' code): "[MATH_TASK] Problem:\\n{problem}\\n\\nSolution:",
BOS prepended by the engine; SFT target "\\n{solution}"; generation stops at "\\n\\n\\nProblem:" or EOS.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROMPT = "[MATH_TASK] Problem:\n{problem}\n\nSolution:"
STOP = ("\n\n\nProblem:",)
REPO = Path(__file__).resolve().parents[2]


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    data_dir: str | None = Field(None, description="folder with train.jsonl and test.jsonl (the raw files, as in "
                                 "shared/data); null: download from the HF hub")
    split_seed: int = Field(0, description="seed of the validation carve from train (fixed across runs)")
    n_validation: int = Field(..., ge=1, description="problems carved from train for validation")

    @field_validator("data_dir")
    @classmethod
    def _exists(cls, v):
        """Checked when the sweep is validated, before any run starts."""
        if v is not None and resolve_dir(v) is None:
            raise ValueError(f"no such folder: {v!r} (relative paths: from the current directory or the repository)")
        return v


def resolve_dir(data_dir: str) -> Path | None:
    """A data folder as given, or relative to the repository (so experiments/*.yaml work from any directory)."""
    for p in (Path(data_dir).expanduser(), REPO / data_dir):
        if p.is_dir():
            return p
    return None


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def local_rows(data_dir: str, split: str, task: str) -> list[dict]:
    path = (resolve_dir(data_dir) or Path(data_dir)) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"task {task}: task.data_dir={data_dir!r} has no {split}.jsonl (expected the raw "
                                f"files: {path})")
    return read_jsonl(path)


def carve(train: list[dict], n_validation: int, seed: int, task: str) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded shuffle of the train rows' positions; the first n_validation positions are
    validation, the rest train (in their original order, so a row's id does not depend on the seed)."""
    if n_validation >= len(train):
        raise ValueError(f"task {task}: task.n_validation={n_validation} must be smaller than the {len(train)} "
                         f"train problems")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_validation])
    return ([r for i, r in enumerate(train) if i not in val], [train[i] for i in sorted(val)])


def check_unique(rows: list[dict], task: str) -> None:
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {task}: duplicate problem ids in the data")


class PaperTask:
    """The part of a GSM8K / MATH task that does not depend on the dataset: splits (test as given, validation carved
    from train), the paper's prompt, stop string and SFT target. A subclass gives `_rows(split)` (raw rows of
    "train" / "test") and `_problem(row, pid)` (a problem dict; `pid` = "<split>-<position>" for data without ids)."""
    stop: tuple[str, ...] = STOP

    def __init__(self, cfg):
        self.cfg = cfg
        train, test = ([self._problem(r, f"{s}-{i}") for i, r in enumerate(self._rows(s))] for s in ("train", "test"))
        train, val = carve(train, cfg.n_validation, cfg.split_seed, self.name)
        self._splits = {"train": train, "validation": val, "test": test}
        check_unique(train + val + test, self.name)

    def problems(self, split: str) -> list[dict]:
        return self._splits[split]

    def prompt(self, problem: dict) -> str:
        return PROMPT.format(problem=problem["question"])

    def sft_target(self, problem: dict, rng: random.Random | None = None) -> str:
        return "\n" + problem["solution"]

