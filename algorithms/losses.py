"""The shared math of every algorithm, one function per equation. Tensors are [batch, tokens] with a 0/1 `mask`
marking response tokens; nothing here knows about models, engines or tasks."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(target_t | prefix) from logits [B, T, V] and targets [B, T], with logits divided by the sampling
    temperature (the policy that sampled the data is softmax(logits / T), as in the authors' code)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Token-weighted (x - mean) / std over the masked entries (unbiased variance, as in the authors' code)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = 10.0) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref_logp - logp. Always >= 0 and 0 iff
    equal; clamped to [0, clamp] per token as in the authors' code (a single large step can blow its tail up)."""
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    return kl.clamp(0.0, clamp) if clamp is not None else kl


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                      clip_eps: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped policy loss, token-level masked mean: -min(r A, clip(r, 1-eps, 1+eps) A)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
             "ratio": masked_mean(ratio, mask),
             "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float = 0.2) -> torch.Tensor:
    """0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2), token-level masked mean."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's masked tokens. values[t] = V(state before token t); the
    value after the last token is 0 (terminal). Returns (advantages, returns = advantages + values).
    With gamma = lam = 1 the advantage is the return-to-go minus the value."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_v = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = torch.where(m > 0, delta + gamma * lam * last, last)
        next_v = torch.where(m > 0, values[:, t], next_v)
        adv[:, t] = last * m
    return adv, (adv + values) * mask


def step_advantages(values: list[float], reward: float) -> list[float]:
    """VinePPO's one-step TD advantages with Monte-Carlo values (gamma = 1).
    values[i] = V(s_i) for the L step-boundary states s_0 (bare prompt) .. s_{L-1} (before the last step);
    V(s_L) = 0 (terminal) and the reward arrives with the last step: A_i = r_i + V(s_{i+1}) - V(s_i)."""
    v = list(values) + [0.0]
    r = [0.0] * (len(values) - 1) + [reward]
    return [r[i] + v[i + 1] - v[i] for i in range(len(values))]


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, dpop_lambda: float = 0.0) -> torch.Tensor:
    """Per-pair DPO loss on sequence log-probs, plus DPO-Positive's penalty (Pal et al. 2024) that switches on only
    when the chosen response became less likely than under the reference:
        -log sigmoid(beta * (margin - dpop_lambda * max(0, ref_chosen - pi_chosen)))"""
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    penalty = F.relu(ref_chosen - pi_chosen)     # relu, not clamp: no gradient at equality (clamp passes it)
    return -F.logsigmoid(beta * (margin - dpop_lambda * penalty))


def group_normalized(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4,
                     scale: bool = True) -> torch.Tensor:
    """GRPO: (r - mean of its group) / (unbiased std of its group + eps), as TRL; `scale=False` only subtracts the mean."""
    out = torch.empty_like(rewards)
    for g in groups.unique():
        idx = groups == g
        r = rewards[idx]
        out[idx] = (r - r.mean()) / (r.std() + eps) if scale else r - r.mean()
    return out


def leave_one_out(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO: r_i minus the mean reward of the other samples of the same prompt."""
    out = torch.empty_like(rewards)
    for g in groups.unique():
        idx = groups == g
        r, k = rewards[idx], int(idx.sum())
        out[idx] = r - (r.sum() - r) / max(k - 1, 1) if k > 1 else torch.zeros_like(r)
    return out
