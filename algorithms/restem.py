"""RestEM (ReST-EM, Singh et al. 2024): expectation-maximisation by rejection sampling, the paper's other offline
baseline. One harness iteration is one RestEM iteration (paper: 10):

collect  sample `train.samples_per_prompt` solutions (paper: 8 at T 0.6) for `train.prompts_per_iteration` training
         problems (paper: all of them) from the *current* policy, and keep the correct ones (reward 1; unfinished
         solutions score 0), at most `algo.max_per_problem` (10) per problem.
update   reset the policy to the *starting* checkpoint and fine-tune it on the kept solutions for up to
         `train.epochs` epochs (paper: 8) with a fresh AdamW whose warmup + decay spans epochs x ceil(kept /
         batch_size) steps. Loss: negative mean token log-prob per solution, averaged over the batch, logits divided
         by the sampling temperature (both as in the authors' trainer). After every epoch the checkpoint is
         evaluated on the validation split and training advances while that accuracy strictly improves (the
         authors' `restem_paper_original` rule; the starting checkpoint itself is candidate 0, so an iteration that
         only hurts returns to it). The chosen checkpoint is the policy the next iteration samples from. Epochs after
         the first one that does not improve could not change the choice, so they are not trained.

Cost accounting: the selection evaluations go through harness.runtime.evaluate with the tag "restem_select", so their
time and tokens are counted as training cost (only the run loop's own "eval" evaluations are not). The starting
checkpoint's validation accuracy is measured once and remembered.
Resume: the starting weights are copied when the run is built (from its starting checkpoint, before a resume loads
anything), the current policy is the checkpoint, and the optimizer is rebuilt every iteration, so a run resumed at
an iteration boundary is exact.
"""
from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from algorithms import register
from algorithms.base import Algorithm, Padded
from harness.runtime.backends import movement_stats
from harness.runtime.evaluate import evaluate
from harness.runtime.models import bump_weights_version


@dataclass
class Kept:
    """collect's result: the solutions kept to fine-tune on, and the iteration's sampling metrics."""
    iteration: int
    solutions: Padded | None    # one row per kept solution (prompt + solution + EOS); None when none was kept
    info: dict[str, float]      # train_reward, finished, response_len, kept, kept_problems

    @property
    def kept(self) -> int:
        return 0 if self.solutions is None else len(self.solutions.input_ids)


def keep_correct(rewards: list[float], groups: list[int], max_per_problem: int, rng: random.Random) -> list[int]:
    """Indices of the samples to fine-tune on: those with reward 1, at most `max_per_problem` per problem (`groups`;
    a random subset where there are more), in sample order; deterministic given `rng`."""
    by_problem: dict[int, list[int]] = {}
    for i, (r, g) in enumerate(zip(rewards, groups)):
        if r >= 1.0:
            by_problem.setdefault(g, []).append(i)
    keep = []
    for idx in by_problem.values():
        keep += rng.sample(idx, max_per_problem) if len(idx) > max_per_problem else idx
    return sorted(keep)


def snapshot(model) -> dict:
    """A copy of the weights, kept on the CPU (a second copy of a large model need not take accelerator memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@register("restem")
class RestEM(Algorithm):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_per_problem: int = Field(10, ge=1, description="correct solutions kept per problem")
        select: bool = Field(True, description="pick the epoch by validation accuracy (false: train all epochs)")
        select_split: Literal["validation", "train", "test"] = Field("validation",
                                                                    description="split the epochs are judged on")
        select_max_problems: int | None = Field(None, ge=1, description="problems of that split (default: eval's)")

    def __init__(self, cfg, policy, tokenizer, engine, task):
        super().__init__(cfg, policy, tokenizer, engine, task)
        self.start = snapshot(policy)                     # every iteration fine-tunes from here
        self.start_acc: float | None = None
        self.trainer = None                               # a fresh optimizer per iteration (see update)
        self.plan = 0

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.backend.name != "torch" or cfg.backend.processes != 1:
            raise ValueError(f"restem re-creates its optimizer every iteration and supports backend torch with one "
                             f"process only (got backend.name {cfg.backend.name!r}, processes "
                             f"{cfg.backend.processes})")

    def total_steps(self) -> int:
        """Steps of the *current* iteration's fine-tune (each iteration has its own optimizer and schedule)."""
        return self.plan

    # --- collect -------------------------------------------------------------------------------------------
    def collect(self, iteration: int) -> Kept:
        t = self.cfg.train
        problems = self.prompt_batch(iteration)
        prompts, samples, rewards = self.sample(problems, t.samples_per_prompt, self.seed(iteration, "generate"))
        groups = [x.prompt_index for x in samples]
        keep = keep_correct(rewards, groups, self.opts.max_per_problem, random.Random(self.seed(iteration, "keep")))
        solutions = self.pad([prompts[groups[i]] for i in keep], [samples[i].token_ids for i in keep]) if keep else None
        return Kept(iteration, solutions, info={
            "train_reward": sum(rewards) / len(rewards), "finished": sum(x.finished for x in samples) / len(samples),
            "response_len": sum(len(x.token_ids) for x in samples) / len(samples), "kept": len(keep),
            "kept_problems": len({groups[i] for i in keep})})

    # --- update --------------------------------------------------------------------------------------------
    def update(self, batch: Kept) -> dict[str, float]:
        t, it = self.cfg.train, batch.iteration
        self.policy.load_state_dict(self.start)               # ReST-EM: every iteration starts from the start
        bump_weights_version(self.policy)
        self.plan = t.epochs * math.ceil(batch.kept / t.batch_size)
        self.trainer = self.make_trainer(self.policy)
        select_s0 = self.engine.stats.seconds.get("restem_select", 0.0)
        if self.opts.select and self.start_acc is None:
            self.start_acc = self.validation_acc(("start",))
        accs, chosen, best, stats, trained = [self.start_acc], 0, None, Counter(), 0
        for epoch in range(1, t.epochs + 1 if batch.kept else 1):
            stats.update(self.train_epoch(batch, epoch))
            trained = epoch
            if not self.opts.select:
                chosen = epoch
                continue
            accs.append(self.validation_acc((it, epoch)))
            if accs[-1] <= accs[-2]:                          # the first epoch that does not improve: stop
                break
            chosen = epoch
            if epoch < t.epochs:                              # a later epoch may still be worse: remember this one
                best = snapshot(self.policy)
        # Health of the fine-tune before the selection may go back to the start (the run loop finds no trainer left).
        health = movement_stats("policy", self.trainer, self.cfg, it + 1)
        if chosen < trained:                                  # the last trained epoch was not chosen: go back
            self.policy.load_state_dict(best if chosen else self.start)
            bump_weights_version(self.policy)
        self.trainers.pop("policy")                           # nothing of the optimizer outlives the iteration:
        self.trainer = None                                   # the checkpoint is the policy's weights alone
        steps = max(stats.pop("steps", 0), 1)
        out = {**batch.info, **health, **{k: v / steps for k, v in stats.items()}, "epochs_trained": trained,
               "chosen_epoch": chosen, "iteration_steps": self.plan,
               "t_select": round(self.engine.stats.seconds.get("restem_select", 0.0) - select_s0, 4)}
        if self.opts.select:
            out.update(select_acc=accs[chosen], start_acc=self.start_acc)
        return out

    def train_epoch(self, batch: Kept, epoch: int) -> Counter:
        t, n, sol = self.cfg.train, batch.kept, batch.solutions
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed(batch.iteration, "epoch", epoch)))
        stats = Counter()
        for i in range(0, n, t.batch_size):
            rows = order[i:i + t.batch_size]
            for k in range(0, len(rows), t.micro_batch_size):
                mrows = rows[k:k + t.micro_batch_size]
                mask = sol.mask[mrows].to(self.device)
                logp = self.logprobs(self.trainer.model, sol, self.temperature, mrows, grad=True)
                nll = -(logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)   # mean over each solution's tokens
                self.trainer.backward(nll.sum() / len(rows))              # mean over the batch's solutions
                stats["loss"] += float(nll.detach().sum()) / len(rows)
            stats["lr"] += self.trainer.lr                                 # the lr this step used
            stats["grad_norm"] += self.trainer.step()
            stats["steps"] += 1
            self.counts["grad_steps"] += 1
        return stats

    def validation_acc(self, tag: tuple) -> float:
        """Accuracy of the policy as it is now: an engine holding its own copy of the weights (vLLM, ZeRO-3) is
        synced first, or it would score the weights of the last sync, not this epoch's."""
        with self.trainer.full_model() if self.trainer else contextlib.nullcontext(self.policy) as model:
            self.engine.sync(model)
        o = self.opts
        ecfg = self.cfg.eval.model_copy(update={"greedy": False,
                                                "max_problems": o.select_max_problems or self.cfg.eval.max_problems})
        res = evaluate(self.engine, self.task, o.select_split, ecfg, self.cfg.sampling.max_new_tokens,
                       seed=self.seed("select", *tag), tag="restem_select")
        return res["acc"]

    # --- checkpoint ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "counts": dict(self.counts), "start_acc": self.start_acc}

    def load_state_dict(self, sd: dict) -> None:
        self.policy.load_state_dict(sd["policy"])
        self.counts = Counter(sd["counts"])
        self.start_acc = sd["start_acc"]
