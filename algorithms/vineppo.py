"""VinePPO: PPO whose value function is a Monte-Carlo estimate instead of a learned critic.

For a sampled response split into reasoning steps y = (y_0, ..., y_{L-1}) (the task splits; "".join == response):
    s_i       = prompt + y_0 .. y_{i-1}                       (s_0 is the bare prompt; L states in all)
    V(s_i)    = 1/K * sum_k R(prompt, y_<i, eta_k),  eta_k ~ pi_theta(. | s_i)   (K fresh continuations)
    V(s_L)    = 0                                              (terminal)
    A_i       = r_i + V(s_{i+1}) - V(s_i),   r_i = 0 except r_{L-1} = R(y)     (gamma = 1)
Every token of step i gets A_i (steps -> characters -> tokens through the tokenizer's offsets; EOS gets the last
step's). Identical prefixes across the batch are rolled out once; the rollouts are only used for V, never trained
on. States beyond `max_states` are not estimated: their value is back-filled with the return, so those steps get
advantage 0 (the authors' GSM8K setting, 25). The policy update is the shared PPO one (algorithms/onpolicy.py).
"""
from __future__ import annotations

import bisect

import torch
from pydantic import BaseModel, ConfigDict, Field

from algorithms import register
from algorithms.base import token_char_offsets
from algorithms.losses import step_advantages
from algorithms.onpolicy import OnPolicy
from harness.tasks import grade_many


@register("vineppo")
class VinePPO(OnPolicy):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        K: int = Field(9, ge=1, description="MC rollouts per step-boundary state")
        max_states: int | None = Field(None, ge=1, description="estimate only the first N states (GSM8K: 25)")

    def advantages(self, batch: dict) -> torch.Tensor:
        samples, problems, prompts = batch["samples"], batch["problems"], batch["prompts"]
        eos = self.tokenizer.eos_token_id
        # 1. Step-boundary states of every response, as token prefixes (what the policy actually saw).
        trajs = []
        for x, reward in zip(samples, batch["rewards"].tolist()):
            steps = self.task.split_steps(x.text)
            body = x.token_ids[:-1] if x.token_ids and x.token_ids[-1] == eos else x.token_ids
            offsets = token_char_offsets(self.tokenizer, body)
            bounds = [0]
            for s in steps[:-1]:
                bounds.append(bounds[-1] + len(s))
            cut = [bisect.bisect_left(offsets, b) for b in bounds]     # first token starting at/after the boundary
            trajs.append((x, reward, body, offsets, bounds, cut))
        # 2. One MC estimate per unique state.
        states: dict[tuple, int] = {}
        requests = []
        for x, _, body, offsets, bounds, cut in trajs:
            for i, k in enumerate(cut[:self.opts.max_states]):
                key = (x.prompt_index, tuple(body[:k]))
                if key not in states:
                    states[key] = len(requests)
                    prefix_text = x.text[:offsets[k]] if k < len(offsets) else x.text
                    requests.append((x.prompt_index, body[:k], prefix_text))
        values = self.mc_values(requests, problems, prompts, batch["iteration"])
        # 3. Step advantages, painted onto the tokens of each step.
        adv = torch.zeros_like(batch["mask"])
        est_values = []
        for b, (x, reward, body, offsets, bounds, cut) in enumerate(trajs):
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
        batch["vine"] = {"states": len(requests), "state_refs": sum(len(t[5]) for t in trajs),
                         "value_mean": sum(est_values) / max(len(est_values), 1)}
        return adv

    def mc_values(self, requests, problems, prompts, iteration, K: int | None = None, seed_tag="mc") -> list[float]:
        """V(s) for each request (prompt index, response-prefix token ids, prefix text): the mean 0/1 reward of K
        continuations sampled from the current policy with the training sampling parameters. A continuation that
        runs out of token budget scores 0 (unfinished). The budget is what the response itself had left."""
        K = K or self.opts.K
        s = self.cfg.sampling
        outs = self.engine.generate([prompts[p] + ids for p, ids, _ in requests], n=K, temperature=s.temperature,
                                    top_p=s.top_p, max_new_tokens=[s.max_new_tokens - len(ids) for _, ids, _ in requests],
                                    stop=self.task.stop, seed=self.seed(iteration, seed_tag), tag="mc_rollouts")
        todo = [(r, k) for r in range(len(requests)) for k in range(K) if outs[r * K + k].finished]
        grades = grade_many(self.task, [(requests[r][2] + outs[r * K + k].text, problems[requests[r][0]]["answer"])
                                        for r, k in todo])
        sums = [0.0] * len(requests)
        for (r, _), g in zip(todo, grades):
            sums[r] += g
        return [v / K for v in sums]

    def batch_metrics(self, batch: dict) -> dict[str, float]:
        out = super().batch_metrics(batch)
        v = batch["vine"]
        out.update(mc_states=v["states"], mc_rollouts=v["states"] * self.opts.K, mc_value_mean=v["value_mean"],
                   mc_dedup=1.0 - v["states"] / max(v["state_refs"], 1))
        return out
