"""The embedded tiny task: chained modular arithmetic with `;`-separated reasoning steps.

prompt `6a+3b*3c-2d*7=` -> response `6a+3=9;9b*3=7;7c-2=5;5d*7=5;#5`: each step computes (v op b) mod m, left to
right. The letters label the operations: a step names the operation it applies, so finding it in the prompt is a
content match (easy for attention) rather than counting positions. Without labels (`labels: false`, the format
`6+3=9;9*3=7;...`) a 2-layer model needs 3x more SFT: after 1500 steps all of its greedy errors were copy errors
(wrong operation or operand), none arithmetic.

Why this variant (see docs/tasks.md "The tiny task"): a tiny model learns the per-step arithmetic in a few minutes of SFT,
and SFT demonstrations whose step results are corrupted with probability `noise` teach it a *stochastic* per-step
error. RL can then remove errors that are choices of the policy, located at known steps, which is the situation
where step-level credit assignment is meaningful. Operand 0 is excluded so there is no `*0` shortcut to the answer.
"""
from __future__ import annotations

import random
import re

from pydantic import BaseModel, ConfigDict, Field

from harness.tasks import register

_ANSWER = re.compile(r"#(\d+)\s*$")


def _apply(v: int, op: str, b: int, m: int) -> int:
    return (v + b) % m if op == "+" else (v - b) % m if op == "-" else (v * b) % m


@register("arithmetic")
class Arithmetic:
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = "arithmetic"
        data_seed: int = Field(1234, description="seed of the problem sets (fixed across runs)")
        modulus: int = Field(10, ge=2, le=100)
        min_ops: int = Field(4, ge=1)
        max_ops: int = Field(8, ge=1, le=26)
        ops: str = Field("+-*", pattern=r"^[+\-*]+$")
        noise: float = Field(0.2, ge=0.0, lt=1.0, description="per-step corruption probability of SFT demos")
        noise_ops: str = Field("+-*", pattern=r"^[+\-*]*$", description="ops whose step results may be corrupted")
        n_train: int = Field(20000, ge=1)
        n_validation: int = Field(256, ge=1)
        n_test: int = Field(1024, ge=1)
        labels: bool = Field(True, description="label operations a, b, c, ... in prompt and steps")

    stop: tuple[str, ...] = ()

    def __init__(self, cfg: "Arithmetic.Config"):
        if cfg.min_ops > cfg.max_ops:
            raise ValueError(f"task.min_ops={cfg.min_ops} > task.max_ops={cfg.max_ops}")
        self.cfg = cfg
        rng, seen, self._splits = random.Random(cfg.data_seed), set(), {}
        # Test first, then validation, then train: the evaluation sets do not change when n_train does.
        for split, n in (("test", cfg.n_test), ("validation", cfg.n_validation), ("train", cfg.n_train)):
            out, misses = [], 0
            while len(out) < n:
                p = self._make(rng)
                misses = misses + 1 if p["question"] in seen else 0
                if misses > 10_000:     # the space of distinct problems is (nearly) exhausted
                    raise ValueError(f"task: cannot draw {cfg.n_test} + {cfg.n_validation} + {cfg.n_train} distinct "
                                     f"problems with modulus={cfg.modulus}, ops={cfg.ops!r}, min_ops={cfg.min_ops}, "
                                     f"max_ops={cfg.max_ops}; lower n_train/n_validation/n_test")
                if p["question"] not in seen:
                    seen.add(p["question"])
                    p["id"] = f"{split}-{len(out)}"
                    out.append(p)
            self._splits[split] = out

    def _make(self, rng: random.Random) -> dict:
        c, m = self.cfg, self.cfg.modulus
        start = v = rng.randrange(m)
        ops = [(rng.choice(c.ops), rng.randrange(1, m)) for _ in range(rng.randint(c.min_ops, c.max_ops))]
        for op, b in ops:
            v = _apply(v, op, b, m)
        question = str(start) + "".join(f"{self._label(i)}{op}{b}" for i, (op, b) in enumerate(ops)) + "="
        return {"question": question, "answer": str(v), "start": start, "ops": ops}

    def _label(self, i: int) -> str:
        return "abcdefghijklmnopqrstuvwxyz"[i] if self.cfg.labels else ""

    def problems(self, split: str) -> list[dict]:
        return self._splits[split]

    def prompt(self, problem: dict) -> str:
        return problem["question"]

    def solution(self, problem: dict, rng: random.Random | None = None, noise: float = 0.0) -> str:
        """The worked solution; with `noise`, each step's result is replaced by a random wrong value with that
        probability and the chain continues from the corrupted value (so the final answer is usually wrong)."""
        m = self.cfg.modulus
        v = problem["start"]
        steps = []
        for op, b in problem["ops"]:
            r = _apply(v, op, b, m)
            if noise and op in self.cfg.noise_ops and rng.random() < noise:
                r = (r + rng.randrange(1, m)) % m
            steps.append(f"{v}{self._label(len(steps))}{op}{b}={r};")
            v = r
        return "".join(steps) + f"#{v}"

    def sft_target(self, problem: dict, rng: random.Random) -> str:
        return self.solution(problem, rng, self.cfg.noise)

    @staticmethod
    def split_steps(response: str) -> list[str]:
        steps = [s for s in re.split(r"(?<=;)", response) if s]
        return steps or [response]

    @staticmethod
    def grade(response: str, answer: str) -> float:
        m = _ANSWER.search(response)
        return float(m is not None and m.group(1) == str(answer).strip())
