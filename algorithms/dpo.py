"""DPO+ (DPO-Positive, Pal et al. 2024): the paper's offline preference baseline. `algo.dpop_lambda: 0` is plain DPO.

Recipe (paper §2 / the authors' configs): sample 64 solutions per training problem from the starting (SFT) policy
(T 0.6, top-p 0.9); a solution is chosen-worthy if its reward >= 0.5, unfinished ones score 0; pair every correct
with every incorrect solution of the same problem and keep a random <= 64 pairs per problem (problems without both
give none); train 3 epochs, batch 64 pairs, on (algorithms/losses.py: dpo_loss)
    -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))
                         - lambda * max(0, log ref(y_w) - log pi(y_w))])
with sequence log-probs (sums over response tokens, logits divided by the sampling temperature, as in the authors'
trainer), lambda = 50, beta = 0.1 (MATH) / 0.3 (GSM8K), lr 1e-6, warmup 3 %.

How it maps onto the harness's iterations (so that the run loop's periodic evaluation draws a curve):
- collect(0) samples `train.prompts_per_iteration` problems x `train.samples_per_prompt` solutions from the starting
  policy (tag "generate": time and tokens are counted like every other method's sampling), builds the pairs and
  computes their reference log-probs once. The starting policy *is* the reference, so no second model is kept.
- The S = epochs x ceil(pairs / batch_size) optimizer steps are spread over `train.iterations`: iteration i runs
  steps [i*S/N, (i+1)*S/N). The learning-rate schedule (warmup + decay) spans exactly these S steps; it is created
  once the pairs are known, which is why total_steps() is 0 before collect(0).
- The pair dataset (token ids, reference log-probs, pairs) is part of state_dict: a resumed run trains on exactly
  the same pairs without sampling again. Epoch e's pair order is a permutation drawn from (seed, e).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from algorithms import register
from algorithms.base import Algorithm, check_samples_per_prompt
from algorithms.losses import dpo_loss


@dataclass
class Steps:
    """collect's result: the optimizer steps of this iteration (global step numbers) and, at iteration 0, the
    sampling and pairing metrics."""
    iteration: int
    steps: range
    info: dict[str, float]


def make_pairs(rewards: list[float], groups: list[int], max_pairs: int, rng: random.Random) -> list[tuple[int, int]]:
    """(chosen, rejected) sample indices: every correct x incorrect pair of samples of the same problem (`groups`),
    a random `max_pairs` of them where there are more; problems without both a correct and an incorrect sample give
    none. Problems in order of first appearance, pairs sorted within a problem; deterministic given `rng`."""
    by_problem: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_problem.setdefault(g, []).append(i)
    pairs = []
    for idx in by_problem.values():
        cands = [(w, l) for w in idx if rewards[w] >= 0.5 for l in idx if rewards[l] < 0.5]
        if len(cands) > max_pairs:
            cands = sorted(rng.sample(cands, max_pairs))
        pairs += cands
    return pairs


@register("dpo")
class DPO(Algorithm):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        beta: float = Field(0.1, gt=0.0, description="DPO temperature (paper: 0.1 MATH, 0.3 GSM8K)")
        dpop_lambda: float = Field(50.0, ge=0.0, description="DPO-Positive penalty weight; 0 = plain DPO")
        max_pairs: int = Field(64, ge=1, description="pairs kept per problem")

    @classmethod
    def check_config(cls, cfg) -> None:
        check_samples_per_prompt(cfg, f"{cls.name} pairs samples of the same problem")

    def __init__(self, cfg, policy, tokenizer, engine, task):
        super().__init__(cfg, policy, tokenizer, engine, task)
        self.data = None                           # built by collect(0); restored by load_state_dict
        self.trainer = None                        # made once the pairs (and so the schedule's length) are known
        self._orders: dict[int, torch.Tensor] = {}

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data["pairs"]) / self.cfg.train.batch_size) if self.data else 0

    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch()

    # --- collect -------------------------------------------------------------------------------------------
    def build_pairs(self) -> dict[str, float]:
        """Sample from the starting policy, pair, and compute the reference log-probs of the paired samples."""
        t = self.cfg.train
        problems = self.prompt_batch(0)
        prompts, samples, rewards = self.sample(problems, t.samples_per_prompt, self.seed(0, "generate"))
        pairs = make_pairs(rewards, [x.prompt_index for x in samples], self.opts.max_pairs,
                           random.Random(self.seed("pairs")))
        used = sorted({i for p in pairs for i in p})          # only paired samples are kept (and need ref log-probs)
        new = {old: k for k, old in enumerate(used)}
        self.data = {"prompts": [prompts[samples[i].prompt_index] for i in used],
                     "responses": [samples[i].token_ids for i in used],
                     "pairs": torch.tensor([(new[w], new[l]) for w, l in pairs], dtype=torch.long).view(-1, 2)}
        mb = self.cfg.train.micro_batch_size
        ref = [self.seq_logprobs(self.policy, self.pad(self.data["prompts"][i:i + mb],
                                                       self.data["responses"][i:i + mb]), self.temperature).cpu()
               for i in range(0, len(used), mb)]
        self.data["ref"] = torch.cat(ref) if ref else torch.zeros(0)
        self.trainer = self.make_trainer(self.policy)            # the schedule spans the S steps now known
        return {"train_reward": sum(rewards) / len(rewards), "finished": sum(x.finished for x in samples) / len(samples),
                "response_len": sum(len(x.token_ids) for x in samples) / len(samples), "pairs": len(pairs),
                "pair_problems": len({samples[w].prompt_index for w, _ in pairs}), "total_steps": self.total_steps()}

    def collect(self, iteration: int) -> Steps:
        info = self.build_pairs() if iteration == 0 else {}
        S, N = self.total_steps(), self.cfg.train.iterations
        return Steps(iteration, range(iteration * S // N, (iteration + 1) * S // N), info)

    def step_rows(self, step: int) -> torch.Tensor:
        """Pair indices of global optimizer step `step`: epoch e = step // steps_per_epoch walks a permutation."""
        epoch, k = divmod(step, self.steps_per_epoch())
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.seed("pair_order", epoch))
            self._orders = {epoch: torch.randperm(len(self.data["pairs"]), generator=gen)}
        bs = self.cfg.train.batch_size
        return self._orders[epoch][k * bs:(k + 1) * bs]

    # --- update --------------------------------------------------------------------------------------------
    def update(self, batch: Steps) -> dict[str, float]:
        sums: dict[str, float] = {}
        for step in batch.steps:
            for k, v in self.train_step(self.step_rows(step)).items():
                sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(len(batch.steps), 1) for k, v in sums.items()}
        if self.trainer is not None:
            out["lr"] = self.trainer.lr
        return {**batch.info, **out}

    def train_step(self, rows: torch.Tensor) -> dict[str, float]:
        """One optimizer step on the pairs `rows` (a micro-batch is train.micro_batch_size pairs: 2x as many
        sequences; data parallel: this process's share of the pairs)."""
        d, o = self.data, self.opts
        agg = {"loss": 0.0, "margin": 0.0, "pref_acc": 0.0, "chosen_logratio": 0.0, "rejected_logratio": 0.0,
               "penalty_frac": 0.0}
        for mrows, w in self.micro_batches(rows):
            p = d["pairs"][mrows]
            idx = torch.cat([p[:, 0], p[:, 1]]).tolist()      # chosen rows, then rejected rows
            logp = self.seq_logprobs(self.trainer.model, self.pad([d["prompts"][j] for j in idx],
                                                                  [d["responses"][j] for j in idx]),
                                     self.temperature, grad=True)
            ref = d["ref"][idx].to(self.device)
            pc, pr, rc, rr = logp[:len(p)], logp[len(p):], ref[:len(p)], ref[len(p):]
            loss = dpo_loss(pc, pr, rc, rr, o.beta, o.dpop_lambda)
            self.trainer.backward(loss.sum() * (w / len(rows)))   # the step's loss is the mean over its pairs
            with torch.no_grad():
                margin = (pc - rc) - (pr - rr)
                for k, v in (("loss", loss), ("margin", margin), ("pref_acc", (margin > 0).float()),
                             ("chosen_logratio", pc - rc), ("rejected_logratio", pr - rr),
                             ("penalty_frac", (pc < rc).float())):
                    agg[k] += float(v.sum()) * w / len(rows)
        agg = self.all_sum(agg)
        agg["grad_norm"] = self.trainer.step()
        self.counts["grad_steps"] += 1
        return agg

    # --- checkpoint ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "data": self.data}   # the run loop saves the trainer

    def load_state_dict(self, sd: dict) -> None:
        self.counts = Counter(sd["counts"])
        self.data = sd["data"]
        if self.data is not None and self.trainer is None:
            self.trainer = self.make_trainer(self.policy)      # the run loop then loads its saved state
