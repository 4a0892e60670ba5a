"""GRPO (Shao et al. 2024, DeepSeekMath), outcome supervision: a critic-free member of the PPO family.

The whole algorithm is one line of math: every token of response i to a prompt gets the same advantage, its reward
normalised within the prompt's group of samples,
    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)          (unbiased std, eps = 1e-4 as in TRL)
Collection (samples_per_prompt responses for each of prompts_per_iteration prompts, old and reference log-probs)
and the update (clipped surrogate, k3 KL to the reference as a loss term, epochs x minibatches) are the shared ones
in algorithms/onpolicy.py, so GRPO differs from PPO and VinePPO in nothing but this advantage column.

Choices, and why:
- No batch whitening on top (`whiten_default = False`), as in DeepSeekMath: the group normalisation already sets
  the scale, and whitening would shift every advantage by the batch mean, so groups whose samples all got the same
  reward (no signal: A = 0) would be pushed up or down. `train.whiten_advantages: true` turns it on.
- The shared update takes a token-level mean of the surrogate (DeepSeekMath: mean over each response's tokens, then
  over responses) and its KL coefficient (train.kl_coef; DeepSeekMath: 0.04): the comparison isolates the advantage
  estimator. `algo.scale: false` drops the division by the std (Dr. GRPO's fix for its difficulty bias).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from algorithms import register
from algorithms.base import check_samples_per_prompt
from algorithms.losses import group_normalized
from algorithms.onpolicy import Advantages, OnPolicy, Rollouts


@register("grpo")
class GRPO(OnPolicy):
    class Config(BaseModel):                    # the options under `algo:` in a YAML (unknown keys are rejected)
        model_config = ConfigDict(extra="forbid")
        eps: float = Field(1e-4, ge=0.0, description="added to the group std")
        scale: bool = Field(True, description="divide by the group std (false: Dr. GRPO, mean-centring only)")

    whiten_default = False

    @classmethod
    def check_config(cls, cfg) -> None:         # runs when the sweep is validated, before any job starts
        check_samples_per_prompt(cfg, f"{cls.name} compares samples of the same prompt")

    def advantages(self, batch: Rollouts) -> Advantages:
        # batch.rewards [b]: 0/1 reward of each response; batch.groups [b]: index of its prompt;
        # batch.mask [b, t-1]: 1 on the positions whose target is a response token. adv: [b, t-1].
        adv = group_normalized(batch.rewards, batch.groups, self.opts.eps, self.opts.scale)
        return Advantages(adv[:, None] * batch.mask)
