"""Supervised fine-tuning on the task's demonstrations: the starting checkpoint every RL method is compared from.
One iteration = one optimizer step on `train.batch_size` demonstrations (negative log-likelihood, token mean)."""
from __future__ import annotations

import random

import torch

from algorithms import register
from algorithms.base import Algorithm, Padded
from algorithms.losses import masked_mean


@register("sft")
class SFT(Algorithm):
    def __init__(self, cfg, policy, tokenizer, engine, task):
        super().__init__(cfg, policy, tokenizer, engine, task)
        self.trainer = self.make_trainer(policy)

    @classmethod
    def problems_per_iteration(cls, cfg) -> int:
        return cfg.train.batch_size

    def total_steps(self) -> int:
        return self.cfg.train.iterations

    def collect(self, iteration: int) -> Padded:
        problems = self.prompt_batch(iteration, self.cfg.train.batch_size)
        rng = random.Random(self.seed(iteration, "demos"))
        prompts = [self.engine.encode_prompt(self.task.prompt(p)) for p in problems]
        targets = [self.encode(self.task.sft_target(p, rng)) + [self.tokenizer.eos_token_id] for p in problems]
        return self.pad(prompts, targets)

    def update(self, batch: Padded) -> dict[str, float]:
        tokens = float(batch.mask.sum())
        total = 0.0
        for rows, w in self.micro_batches(torch.arange(len(batch.mask))):
            mask = batch.mask[rows].to(self.device)
            logp = self.logprobs(self.trainer.model, batch, 1.0, rows, grad=True)
            loss = -masked_mean(logp, mask) * float(mask.sum()) / tokens * w
            self.trainer.backward(loss)
            total += loss.item()
        grad_norm = self.trainer.step()
        self.counts["grad_steps"] += 1
        return {"loss": self.all_sum({"loss": total})["loss"], "grad_norm": grad_norm, "lr": self.trainer.lr}
