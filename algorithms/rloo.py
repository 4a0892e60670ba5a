"""RLOO (REINFORCE Leave-One-Out; Kool et al. 2019, Ahmadian et al. 2024): a critic-free member of the PPO family.

Every token of response i gets the response's reward minus the mean reward of the *other* samples of its prompt,
    A_i = r_i - 1/(k-1) * sum_{j != i} r_j            (k = samples_per_prompt)
an unbiased baseline (it does not depend on y_i), i.e. an MC estimate of the value of the bare prompt only.
Collection and update are the shared PPO ones (algorithms/onpolicy.py). Differences from Ahmadian et al., kept so
that only the advantage column differs between the PPO-family methods: the KL to the reference is a loss term, not
a reward penalty, and the update is the clipped surrogate (with 1 epoch its first minibatch is exactly on-policy,
where it equals REINFORCE).

No batch whitening (`whiten_default = False`), as in Ahmadian et al.: leave-one-out advantages already sum to zero
within each group and are exactly 0 when all samples agree; whitening would shift those to non-zero values.
Their scale (|A| <= 1) is not normalised, which AdamW's per-parameter step normalisation makes nearly irrelevant.
"""
from __future__ import annotations

from algorithms import register
from algorithms.base import check_samples_per_prompt
from algorithms.losses import leave_one_out
from algorithms.onpolicy import Advantages, OnPolicy, Rollouts


@register("rloo")
class RLOO(OnPolicy):
    whiten_default = False

    @classmethod
    def check_config(cls, cfg) -> None:
        check_samples_per_prompt(cfg, f"{cls.name}'s baseline is the other samples of the prompt")

    def advantages(self, batch: Rollouts) -> Advantages:
        return Advantages(leave_one_out(batch.rewards, batch.groups)[:, None] * batch.mask)
