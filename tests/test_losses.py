"""The shared math, pinned on small exact inputs."""
import math

import pytest
import torch

from algorithms.losses import (clipped_surrogate, clipped_value_loss, dpo_loss, gae, group_normalized, k3_kl,
                               leave_one_out, masked_mean, masked_whiten, step_advantages, token_logprobs)


def test_gae_lambda_gamma_one_is_return_minus_value():
    mask = torch.tensor([[0., 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    values = torch.tensor([[0., .2, .5, .7, 0], [0, 0, .3, .1, .9]])
    rewards = torch.zeros(2, 5)
    rewards[0, 3], rewards[1, 4] = 1.0, 0.0
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    R = torch.tensor([[1.], [0.]])
    assert torch.allclose(adv, (R - values) * mask, atol=1e-6)
    assert torch.allclose(ret, R * mask, atol=1e-6)


def test_gae_general_matches_hand_recursion():
    v = torch.tensor([[.5, .4, .2]])
    r = torch.tensor([[0., .1, 1.]])
    m = torch.ones(1, 3)
    g, lam = 0.9, 0.8
    d = [r[0, t] + g * (v[0, t + 1] if t < 2 else 0) - v[0, t] for t in range(3)]
    a2 = d[2]
    a1 = d[1] + g * lam * a2
    a0 = d[0] + g * lam * a1
    adv, _ = gae(r, v, m, g, lam)
    assert torch.allclose(adv[0], torch.tensor([a0, a1, a2]))


def test_k3_is_nonnegative_zero_at_equality_and_clamped():
    logp = torch.log(torch.tensor([0.1, 0.5, 0.9, 1e-30]))
    assert torch.all(k3_kl(logp, logp) == 0)
    ref = torch.log(torch.tensor([0.5, 0.2, 0.3, 0.9]))
    kl = k3_kl(logp, ref, clamp=None)
    assert torch.all(kl >= 0)
    d = ref - logp
    assert torch.allclose(kl, torch.exp(d) - d - 1)
    assert k3_kl(logp, ref, clamp=10.0).max() == 10.0      # ref/pi = 0.9/1e-30 blows up: clamped
    rand = torch.randn(1000)
    assert torch.all(k3_kl(rand, torch.randn(1000), None) >= 0)


def test_whitening_zero_mean_unit_variance_over_mask_only():
    x = torch.tensor([[1., 2., 3., 100.], [4., 5., 6., -100.]])
    m = torch.tensor([[1., 1., 1., 0.], [1., 1., 1., 0.]])
    w = masked_whiten(x, m)
    vals = w[m.bool()]
    assert abs(float(vals.mean())) < 1e-6
    assert abs(float(vals.std(unbiased=True)) - 1.0) < 1e-5
    assert torch.all(w[~m.bool()] == 0)


def test_clipped_surrogate_inside_and_outside_the_clip():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.1, 1.5, 0.5, 0.9]]))   # ratios 1.1 (inside), 1.5, 0.5 (outside), 0.9
    adv = torch.tensor([[1., 1., -1., -1.]])
    m = torch.ones(1, 4)
    loss, st = clipped_surrogate(logp, old, adv, m, clip_eps=0.2)
    # A>0: min(r, clip(r)) -> 1.1, 1.2 ; A<0: -max(r, clip(r)) -> -0.8, -0.9
    expected = -(1.1 + 1.2 - 0.8 - 0.9) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert math.isclose(float(st["clip_frac"]), 0.5)
    # gradient: zero for the clipped tokens, -A * r / n for the others
    logp.requires_grad_(True)
    loss, _ = clipped_surrogate(logp, old, adv, m, 0.2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.1 / 4, 0, 0, 0.9 / 4]]), atol=1e-6)


def test_value_loss_takes_the_pessimistic_branch():
    v, old, ret, m = torch.tensor([[0.9]]), torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.ones(1, 1)
    # unclipped (0.9-0)^2 = .81, clipped (0.7-0)^2 = .49 -> max = .81
    assert math.isclose(float(clipped_value_loss(v, old, ret, m, 0.2)), 0.5 * 0.81, rel_tol=1e-6)


def test_token_logprobs_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    t = torch.tensor([[0]])
    for T in (1.0, 0.6):
        p = torch.softmax(logits / T, -1)[0, 0, 0]
        assert math.isclose(float(token_logprobs(logits, t, T)), math.log(p), rel_tol=1e-6)


def test_masked_mean():
    assert float(masked_mean(torch.tensor([1., 2., 30.]), torch.tensor([1., 1., 0.]))) == 1.5


def test_step_advantages_hand_built():
    # V(s0)=.5, V(s1)=.25, V(s2)=1; reward 1 arrives with the last step; V(terminal)=0
    assert step_advantages([0.5, 0.25, 1.0], 1.0) == [-0.25, 0.75, 0.0]
    assert step_advantages([0.5, 0.25, 1.0], 0.0) == [-0.25, 0.75, -1.0]
    assert step_advantages([0.3], 1.0) == [pytest.approx(0.7)]
    # they telescope: sum of advantages = R - V(s0)
    a = step_advantages([0.1, 0.9, 0.4, 0.6], 1.0)
    assert math.isclose(sum(a), 1.0 - 0.1)


def test_dpo_and_dpop_loss_on_known_logprobs():
    pc, pr, rc, rr = map(torch.tensor, ([-10.0, -12.0], [-15.0, -11.0], [-11.0, -11.0], [-14.0, -14.0]))
    beta = 0.1
    margin = (pc - rc) - (pr - rr)                       # [1 - (-1), -1 - 3] = [2, -4]
    expect = -torch.nn.functional.logsigmoid(beta * margin)
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta, 0.0), expect)
    # DPOP penalty: only the 2nd pair's chosen fell below the reference (by 1 nat)
    out = dpo_loss(pc, pr, rc, rr, beta, dpop_lambda=50.0)
    assert torch.isclose(out[0], expect[0])
    assert torch.isclose(out[1], -torch.nn.functional.logsigmoid(torch.tensor(beta * (-4.0 - 50.0 * 1.0))))


def test_grpo_group_normalisation_and_rloo_leave_one_out():
    r = torch.tensor([1., 0., 0., 1., 1., 1., 0., 0.])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = group_normalized(r, g, eps=0.0)
    std = torch.tensor([1., 0., 0., 1.]).std()
    assert torch.allclose(a[:4], (torch.tensor([1., 0., 0., 1.]) - 0.5) / std)
    assert torch.allclose(group_normalized(torch.ones(4), torch.zeros(4, dtype=torch.long)), torch.zeros(4))
    loo = leave_one_out(r, g)
    assert torch.allclose(loo[:4], torch.tensor([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3]))
    assert torch.allclose(loo[4:], torch.tensor([1 - 1 / 3, 1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3]))


def test_dpop_penalty_switches_on_only_below_the_reference():
    beta, lam = 0.5, 50.0
    rc, rr, pr = torch.tensor(-10.0), torch.tensor(-12.0), torch.tensor(-12.0)
    for pc, penalty in ((-9.0, 0.0), (-10.0, 0.0), (-10.5, 0.5), (-13.0, 3.0)):
        pc = torch.tensor(pc, requires_grad=True)
        margin = (pc.item() - rc.item()) - (pr.item() - rr.item())
        expect = -math.log(1 / (1 + math.exp(-beta * (margin - lam * penalty))))
        loss = dpo_loss(pc, pr, rc, rr, beta, lam)
        assert math.isclose(float(loss), expect, rel_tol=1e-5), (pc, penalty)
        loss.backward()
        # d/d pc of -log sigmoid(beta * z) = -beta * sigmoid(-beta z) * dz/dpc, dz/dpc = 1 (+ lam below the ref)
        z = margin - lam * penalty
        slope = 1.0 + (lam if penalty > 0 else 0.0)
        assert math.isclose(float(pc.grad), -beta / (1 + math.exp(beta * z)) * slope, rel_tol=1e-4), (pc, penalty)
    # lambda = 0 is plain DPO, whatever the chosen log-prob does
    pc = torch.tensor([-9.0, -13.0])
    plain = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    assert torch.allclose(dpo_loss(pc, pr.expand(2), rc.expand(2), rr.expand(2), beta, 0.0), plain)

