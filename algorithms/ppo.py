"""PPO with a learned critic (the paper's main baseline).

Critic = a copy of the starting model's body + a scalar value head (init N(0, 1/sqrt(hidden+1)), bias 0), trained
by its own AdamW on the clipped value loss. values[t] = V(prompt + response tokens before token t); the reward
(1 if the final answer is right, else 0) sits on the last response token; GAE with gamma = lambda = 1 (paper)
makes A_t = R - V(s_t). advantages() returns them with the value loss's inputs (CriticAdvantages: the values read
at collection and the GAE returns); the policy update is the shared one in algorithms/onpolicy.py.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from algorithms import register
from algorithms.base import Padded, pad_columns, trim
from algorithms.losses import clipped_value_loss, gae, masked_mean
from algorithms.onpolicy import Advantages, OnPolicy, Rollouts
from harness.core.seeding import derive_seed


@dataclass
class CriticAdvantages(Advantages):
    """GAE advantages and the value loss's inputs, all FloatTensor [b, t-1] aligned with the batch's mask."""
    old_values: torch.Tensor   # the critic's V(state before each target token) at collection, 0 off the response
    returns: torch.Tensor      # GAE returns (adv + old_values on the response): the value targets


class Critic(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.body = copy.deepcopy(policy.get_decoder())
        h = policy.config.hidden_size
        self.head = torch.nn.Linear(h, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(h + 1))
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, :-1]).squeeze(-1).float()   # aligned with targets: value of the state before


@register("ppo")
class PPO(OnPolicy):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        gamma: float = Field(1.0, ge=0.0, le=1.0)
        lam: float = Field(1.0, ge=0.0, le=1.0)
        value_clip: float = Field(0.2, gt=0.0)
        critic_lr: float | None = Field(None, gt=0.0, description="default: train.lr")

    def __init__(self, cfg, policy, tokenizer, engine, task):
        with torch.random.fork_rng():                    # before super() wraps the policy (ZeRO-3 partitions it)
            torch.manual_seed(derive_seed(cfg.seed, "critic_init"))
            critic = Critic(policy).to(next(policy.parameters()).device)
        super().__init__(cfg, policy, tokenizer, engine, task)
        self.critic = critic
        self.critic_trainer = self.make_trainer(self.critic, self.opts.critic_lr, name="critic")

    def values(self, batch: Padded, rows=None, grad: bool = False) -> torch.Tensor:
        ids, attn = trim(batch, rows)
        with (torch.enable_grad() if grad else torch.no_grad()), self.autocast():
            critic = self.critic_trainer.model if grad else self.critic   # training passes: via the trainer
            v = critic(ids.to(self.device), attn.to(self.device))
        self.counts["train_tokens" if grad else "forward_tokens"] += int(attn.sum())
        return pad_columns(v, batch.input_ids.shape[1] - 1)

    def advantages(self, batch: Rollouts) -> CriticAdvantages:
        mask = batch.mask
        values = self.map_rows(lambda rows: self.values(batch, rows), len(mask), batch.attention_mask.sum(-1)) * mask
        rewards = torch.zeros_like(mask)
        last = (mask.cumsum(-1) * mask).argmax(-1)          # index of each row's last response token
        rewards[torch.arange(len(mask)), last] = batch.rewards
        adv, returns = gae(rewards, values, mask, self.opts.gamma, self.opts.lam)
        return CriticAdvantages(adv, old_values=values, returns=returns)

    def train_minibatch(self, batch: Rollouts, adv: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        stats = super().train_minibatch(batch, adv, rows)
        a = batch.advantages
        tokens = float(batch.mask[rows].sum())
        vloss_total = 0.0
        for mrows, w_pad in self.micro_batches(rows, batch.attention_mask.sum(-1)):
            mask = batch.mask[mrows].to(self.device)
            v = self.values(batch, mrows, grad=True)
            vloss = clipped_value_loss(v, a.old_values[mrows].to(self.device), a.returns[mrows].to(self.device),
                                       mask, self.opts.value_clip)
            w = w_pad * float(mask.sum()) / max(tokens, 1.0)
            self.critic_trainer.backward(vloss * w)
            vloss_total += float(vloss.detach()) * w
        stats["value_loss"] = self.all_sum({"v": vloss_total})["v"]
        stats["critic_grad_norm"] = self.critic_trainer.step()
        return stats

    def batch_metrics(self, batch: Rollouts) -> dict[str, float]:
        out = super().batch_metrics(batch)
        mask, a = batch.mask, batch.advantages
        out["value_mean"] = float(masked_mean(a.old_values, mask))
        out["value_mae"] = float(masked_mean((a.old_values - a.returns).abs(), mask))
        return out
