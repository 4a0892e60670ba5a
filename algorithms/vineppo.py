"""VinePPO: PPO whose value function is a Monte-Carlo estimate instead of a learned critic.

For a sampled response split into reasoning steps y = (y_0, ..., y_{L-1}) (the task splits; "".join == response):
    s_i       = prompt + y_0 .. y_{i-1}                       (s_0 is the bare prompt; L states in all)
    V(s_i)    = 1/K * sum_k R(prompt, y_<i, eta_k),  eta_k ~ pi_theta(. | s_i)   (K fresh continuations)
    V(s_L)    = 0                                              (terminal)
    A_i       = r_i + V(s_{i+1}) - V(s_i),   r_i = 0 except r_{L-1} = R(y)     (gamma = 1)
Every token of step i gets A_i (steps -> characters -> tokens through the tokenizer's offsets; EOS gets the last
step's). Identical prefixes across the batch are rolled out once; the rollouts are only used for V, never trained
on. Only the first `max_states` states s_0 .. s_{N-1} are estimated; the rest are back-filled with the return, so
those steps get advantage 0 (the authors' GSM8K `max_step_for_value_estimation: 25` estimates s_0 .. s_25, i.e.
max_states 26). A rollout may generate up to the response's remaining budget (max_new_tokens - prefix), or with
`mc_context` set the authors' min(max_new_tokens, mc_context - prompt - prefix), which lets a rollout from a deep
state run past the response's own limit. advantages() returns the token advantages with the estimator's counts
(MCAdvantages); the policy update is the shared PPO one (algorithms/onpolicy.py).

Reused continuations (`reuse`): a rollout from s_i whose first tokens are exactly step y_i is, from there on, a
sample from pi(. | s_{i+1}) (the policy only sees its prefix), with the same reward and the same remaining token
budget. So the states of a response are estimated level by level, and s_{i+1} only samples the K - M continuations
its parent's matching rollouts (M of them) do not already provide: every state still averages K samples of its own
continuation distribution, so V(s) stays unbiased (tests/test_vineppo.py checks it against fresh sampling); states
deep in a response, whose parents mostly continue along the response, cost a fraction of K rollouts.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from algorithms import register
from algorithms.base import token_char_offsets
from algorithms.losses import step_advantages
from algorithms.onpolicy import Advantages, OnPolicy, Rollouts
from harness import tasks


def step_cuts(task, tokenizer, sample) -> tuple[list[int], list[int], list[int]]:
    """(body token ids, token start offsets, cut per step state): the response's tokens without a final EOS, the
    start character of each in the decoded text, and for step state s_i the number of body tokens it keeps, cut[i],
    i.e. the first token starting at/after step i's first character (what the policy actually saw)."""
    eos = tokenizer.eos_token_id
    body = sample.token_ids[:-1] if sample.token_ids and sample.token_ids[-1] == eos else sample.token_ids
    offsets = token_char_offsets(tokenizer, body)
    bounds = [0]
    for s in task.split_steps(sample.text)[:-1]:
        bounds.append(bounds[-1] + len(s))
    return body, offsets, [bisect.bisect_left(offsets, b) for b in bounds]


@dataclass
class MCAdvantages(Advantages):
    """Step advantages painted on the tokens, and what the estimate cost (the iteration's mc_* metrics)."""
    states: int                # unique states estimated (identical prefixes across the batch count once)
    state_refs: int            # step-boundary states of all responses, before deduplication
    rollouts: int              # continuations sampled for the estimates
    value_mean: float          # mean V over the estimated states of all responses


@register("vineppo")
class VinePPO(OnPolicy):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        K: int = Field(9, ge=1, description="MC rollouts per step-boundary state")
        max_states: int | None = Field(None, ge=1, description="estimate only s_0 .. s_{N-1} (the authors' GSM8K "
                                       "max_step_for_value_estimation 25 = max_states 26; MATH: all)")
        mc_context: int | None = Field(None, ge=2, description="rollouts get min(max_new_tokens, mc_context - "
                                       "prompt - prefix tokens), the authors' budget (context 2047 Rho, 2499 "
                                       "DeepSeek); null: the response's remaining budget")
        reuse: bool | None = Field(None, description="count a parent state's rollouts that continue along the "
                                   "response toward the next state's K (default: on when the task has no stop "
                                   "strings)")

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        # A stop string straddling a step boundary cuts a parent's rollout but not a fresh sample of the next state
        # (engines look for stop strings in generated text only), so reuse is exact only without stop strings.
        if cfg.algo.get("reuse") and tasks.get(cfg.task["name"]).stop:
            raise ValueError(f"algo.reuse: true needs a task without stop strings; task {cfg.task['name']!r} stops "
                             f"at {tasks.get(cfg.task['name']).stop!r} (set algo.reuse: false)")
        # A parent's rollout continued from the next state has the parent's budget left, which is the next state's
        # own budget only when it is the response's remaining budget.
        if cfg.algo.get("reuse") and cfg.algo.get("mc_context") is not None:
            raise ValueError("algo.reuse: true needs algo.mc_context: null (a reused continuation would get the "
                             "parent state's token budget)")

    def __init__(self, cfg, policy, tokenizer, engine, task):
        super().__init__(cfg, policy, tokenizer, engine, task)
        self.reuse = (not task.stop and self.opts.mc_context is None) if self.opts.reuse is None else self.opts.reuse

    def budget(self, prompt: list[int], prefix: list[int]) -> int:
        """New tokens a rollout from prompt + prefix may generate (>= 1). (Also called with another algorithm as
        `self` by harness/analysis/values.py, whose options have no mc_context.)"""
        m, context = self.cfg.sampling.max_new_tokens, getattr(self.opts, "mc_context", None)
        if context is None:
            return m - len(prefix)
        return max(1, min(m, context - len(prompt) - len(prefix)))

    def advantages(self, batch: Rollouts) -> MCAdvantages:
        samples, problems, prompts = batch.samples, batch.problems, batch.prompts
        # 1. Step-boundary states of every response, as token prefixes (what the policy actually saw).
        trajs = [(x, reward, *step_cuts(self.task, self.tokenizer, x))
                 for x, reward in zip(samples, batch.rewards.tolist())]
        # 2. One MC estimate per unique state.
        states: dict[tuple, int] = {}
        requests, parent = [], []
        for x, _, body, offsets, cut in trajs:
            up = None
            for i, k in enumerate(cut[:self.opts.max_states]):
                key = (x.prompt_index, tuple(body[:k]))
                if key not in states:
                    states[key] = len(requests)
                    prefix_text = x.text[:offsets[k]] if k < len(offsets) else x.text
                    requests.append((x.prompt_index, body[:k], prefix_text))
                    parent.append(up)
                up = states[key]
        if self.reuse:
            values, fresh = self.tree_values(requests, parent, problems, prompts, batch.iteration)
        else:
            values, fresh = self.mc_values(requests, problems, prompts, batch.iteration), len(requests) * self.opts.K
        # 3. Step advantages, painted onto the tokens of each step.
        adv = torch.zeros_like(batch.mask)
        est_values = []
        for b, (x, reward, body, offsets, cut) in enumerate(trajs):
            n_est = len(cut) if self.opts.max_states is None else min(len(cut), self.opts.max_states)
            v = [values[states[(x.prompt_index, tuple(body[:k]))]] for k in cut[:n_est]]
            est_values += v
            back = reward                                    # back-fill un-estimated states with the return
            v = v + [back] * (len(cut) - n_est)
            a_step = step_advantages(v, reward)
            tok_adv = [a_step[bisect.bisect_right(cut, j) - 1] for j in range(len(body))]
            tok_adv += [a_step[-1]] * (len(x.token_ids) - len(body))   # EOS takes the last step's advantage
            start = len(prompts[x.prompt_index]) - 1
            adv[b, start:start + len(tok_adv)] = torch.tensor(tok_adv)
        return MCAdvantages(adv, states=len(requests), state_refs=sum(len(t[4]) for t in trajs), rollouts=fresh,
                            value_mean=sum(est_values) / max(len(est_values), 1))

    def mc_values(self, requests, problems, prompts, iteration, K: int | None = None, seed_tag="mc") -> list[float]:
        """V(s) for each request (prompt index, response-prefix token ids, prefix text): the mean 0/1 reward of K
        continuations sampled from the current policy with the training sampling parameters. A continuation that
        runs out of token budget (`budget`) scores 0 (unfinished)."""
        K = K or self.opts.K
        s = self.cfg.sampling
        outs = self.engine.generate([prompts[p] + ids for p, ids, _ in requests], n=K, temperature=s.temperature,
                                    top_p=s.top_p,
                                    max_new_tokens=[VinePPO.budget(self, prompts[p], ids) for p, ids, _ in requests],
                                    stop=self.task.stop, seed=self.seed(iteration, seed_tag), tag="mc_rollouts")
        todo = [(r, k) for r in range(len(requests)) for k in range(K) if outs[r * K + k].finished]
        grades = tasks.grade_many(self.task, [(requests[r][2] + outs[r * K + k].text,
                                               problems[requests[r][0]]["answer"]) for r, k in todo])
        sums = [0.0] * len(requests)
        for (r, _), g in zip(todo, grades):
            sums[r] += g
        return [v / K for v in sums]

    def tree_values(self, requests, parent, problems, prompts, iteration) -> tuple[list[float], int]:
        """V(s) for each request as in mc_values, with reused continuations (see the module docstring). `parent[r]`
        is the state one step up the response (None for the bare prompt); its token prefix is a prefix of r's.
        Returns the values and the number of rollouts sampled."""
        K, s = self.opts.K, self.cfg.sampling
        children = [[] for _ in requests]
        for r, up in enumerate(parent):
            if up is not None:
                children[up].append(r)
        pool = [[] for _ in requests]      # (tokens after the state, reward) of each state's K continuations
        level, depth, fresh = [r for r, up in enumerate(parent) if up is None], 0, 0
        while level:
            need = [r for r in level for _ in range(K - len(pool[r]))]
            outs = self.engine.generate([prompts[requests[r][0]] + requests[r][1] for r in need], n=1,
                                        temperature=s.temperature, top_p=s.top_p,
                                        max_new_tokens=[self.budget(prompts[requests[r][0]], requests[r][1])
                                                        for r in need],
                                        stop=self.task.stop, seed=self.seed(iteration, f"mc-{depth}"),
                                        tag="mc_rollouts")
            done = [k for k, x in enumerate(outs) if x.finished]
            grades = dict(zip(done, tasks.grade_many(self.task, [(requests[need[k]][2] + outs[k].text,
                                                                  problems[requests[need[k]][0]]["answer"])
                                                                 for k in done])))
            for k, (r, x) in enumerate(zip(need, outs)):
                pool[r].append((x.token_ids, grades.get(k, 0.0)))      # unfinished = 0
            fresh += len(need)
            for r in level:                 # hand on the rollouts that continue along a child's step
                for c in children[r]:
                    step = requests[c][1][len(requests[r][1]):]
                    pool[c] += [(ids[len(step):], g) for ids, g in pool[r] if ids[:len(step)] == step]
            level, depth = [c for r in level for c in children[r]], depth + 1
        return [sum(g for _, g in p) / len(p) for p in pool], fresh

    def batch_metrics(self, batch: Rollouts) -> dict[str, float]:
        out = super().batch_metrics(batch)
        a = batch.advantages
        out.update(mc_states=a.states, mc_rollouts=a.rollouts, mc_value_mean=a.value_mean,
                   mc_dedup=1.0 - a.states / max(a.state_refs, 1))
        return out
