"""The PPO family's shared collection and update. PPO, VinePPO, GRPO and RLOO differ only in `advantages()`:
how the per-token advantage column is computed from the batch (critic + GAE, MC step values, group mean,
leave-one-out). It returns an `Advantages` (a subclass carries what the method's own loss or metrics also need, e.g.
PPO's value targets) and leaves the batch as it is; collect stores it on the batch for the update.

collect: sample `prompts_per_iteration` x `samples_per_prompt` responses, grade them (unfinished = 0), compute the
         old and reference log-probs, then the subclass's advantages: a `Rollouts`. The first minibatch trains on the
         weights that sampled it, so its old log-probs are its own training pass's, detached (ratio exactly 1, as TRL
         does with one update per batch): the separate old-log-prob pass covers only the other minibatches' rows.
update:  `epochs` passes over the batch in shuffled minibatches of `batch_size` sequences:
         clipped surrogate (token mean) + kl_coef * k3 KL to the reference (clamped per token, summed over a
         sequence's tokens, averaged over sequences), no entropy bonus, advantages whitened (`train.whiten_advantages`;
         when null, the subclass's `whiten_default`: PPO/VinePPO yes, GRPO/RLOO no) over the iteration's batch or,
         `train.whiten_scope: minibatch`, over each minibatch (the authors' code whitens one micro-step across ranks,
         which is the 64-row minibatch in their layouts; here it does not depend on the GPU layout).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from algorithms.base import Algorithm, Padded
from algorithms.losses import clipped_surrogate, k3_kl, masked_mean, masked_whiten
from harness.runtime import dist
from harness.runtime.engines.hf import Sample
from harness.runtime.models import frozen_copy


@dataclass
class Advantages:
    """What advantages() computes. Subclasses add per-token targets or statistics their method reads later."""
    adv: torch.Tensor          # FloatTensor [b, t-1]: per-token advantage, aligned with Rollouts.mask


@dataclass
class Rollouts(Padded):
    """One iteration's batch: a row per sampled response, ordered by problem (input_ids, attention_mask [b, t] and
    mask [b, t-1] as in Padded). collect fills every field; the update fills in own_old_rows' old log-probs."""
    samples: list[Sample]      # the engine's samples: prompt_index, token_ids (the response), text, finished
    problems: list[dict]       # the iteration's problems (id, question, answer); indexed by prompt_index
    prompts: list[list[int]]   # prompt token ids, one list per problem
    iteration: int
    rewards: torch.Tensor      # FloatTensor [b]: 0/1 reward of each response (unfinished = 0)
    groups: torch.Tensor       # LongTensor [b]: each row's problem (= samples[i].prompt_index)
    old_logp: torch.Tensor | None = None    # FloatTensor [b, t-1]: the sampling policy's token log-probs
    ref_logp: torch.Tensor | None = None    # FloatTensor [b, t-1]: the reference's (None without a KL term)
    orders: list[torch.Tensor] | None = None     # per epoch, LongTensor [b]: the row order sliced into minibatches
    own_old_rows: torch.Tensor | None = None     # LongTensor: first minibatch's rows, old_logp still to fill (update)
    advantages: Advantages | None = None    # advantages(), masked to the response tokens


class OnPolicy(Algorithm):
    whiten_default = True           # used when train.whiten_advantages is null (the default)

    def __init__(self, cfg, policy, tokenizer, engine, task):
        super().__init__(cfg, policy, tokenizer, engine, task)
        self.ref = frozen_copy(policy) if cfg.train.kl_coef > 0 else None
        self.trainer = self.make_trainer(policy)

    def steps_per_iteration(self) -> int:
        t = self.cfg.train
        return t.epochs * math.ceil(t.prompts_per_iteration * t.samples_per_prompt / t.batch_size)

    def total_steps(self) -> int:
        return self.cfg.train.iterations * self.steps_per_iteration()

    # --- collect -------------------------------------------------------------------------------------------
    def collect(self, iteration: int) -> Rollouts:
        problems = self.prompt_batch(iteration)
        prompts, samples, rewards = self.sample(problems, self.cfg.train.samples_per_prompt,
                                                self.seed(iteration, "generate"))
        seq_prompts = [prompts[x.prompt_index] for x in samples]
        batch = Rollouts(**vars(self.pad(seq_prompts, [x.token_ids for x in samples])), samples=samples,
                         problems=problems, prompts=prompts, iteration=iteration, rewards=torch.tensor(rewards),
                         groups=torch.tensor([x.prompt_index for x in samples]))
        batch.orders = self.minibatch_orders(iteration, len(samples))
        first = batch.orders[0][:self.cfg.train.batch_size]
        rest = torch.ones(len(samples), dtype=torch.bool)
        rest[first] = False
        rest = rest.nonzero().squeeze(-1)
        batch.old_logp = torch.zeros_like(batch.mask)
        if len(rest):
            batch.old_logp[rest] = self.map_rows(
                lambda rows: self.logprobs(self.policy, batch, self.temperature, rest[rows]), len(rest),
                batch.attention_mask[rest].sum(-1))
        batch.own_old_rows = first                      # filled in by the first minibatch's training pass
        if self.ref is not None:
            batch.ref_logp = self.logprobs_batched(self.ref, batch, self.temperature)
        a = self.advantages(batch)
        batch.advantages = replace(a, adv=a.adv * batch.mask)
        return batch

    def advantages(self, batch: Rollouts) -> Advantages:
        """Per-token advantages [b, t-1] aligned with batch.mask (and whatever else the subclass's update needs),
        computed from the batch without changing it."""
        raise NotImplementedError

    def minibatch_orders(self, iteration: int, n: int) -> list[torch.Tensor]:
        """Each epoch's shuffled row order (its minibatches are consecutive slices of batch_size rows)."""
        gen = torch.Generator().manual_seed(self.seed(iteration, "minibatches"))
        return [torch.randperm(n, generator=gen) for _ in range(self.cfg.train.epochs)]

    # --- update --------------------------------------------------------------------------------------------
    def update(self, batch: Rollouts) -> dict[str, float]:
        t = self.cfg.train
        mask, raw = batch.mask, batch.advantages.adv
        whiten = self.whiten_default if t.whiten_advantages is None else t.whiten_advantages
        adv = masked_whiten(raw, mask) if whiten and t.whiten_scope == "batch" else raw
        per_minibatch = whiten and t.whiten_scope == "minibatch"
        n = mask.shape[0]
        sums: dict[str, float] = {}
        steps = 0
        for order in batch.orders or self.minibatch_orders(batch.iteration, n):
            for i in range(0, n, t.batch_size):
                rows = order[i:i + t.batch_size]
                if per_minibatch:                   # (train_minibatch reads only these rows)
                    adv = adv.index_copy(0, rows, masked_whiten(raw[rows], mask[rows]))
                stats = self.train_minibatch(batch, adv, rows)
                steps += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out.update(self.batch_metrics(batch))
        return out

    def train_minibatch(self, batch: Rollouts, adv: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        t, dev = self.cfg.train, self.device
        tokens = float(batch.mask[rows].sum())
        agg = {"loss": 0.0, "pg_loss": 0.0, "kl_loss": 0.0, "clip_frac": 0.0, "ratio": 0.0}
        own, batch.own_old_rows = batch.own_old_rows, None   # the first minibatch: no update since sampling
        assert own is None or torch.equal(own, rows), "the first minibatch trained must be collect's first"
        filled = []
        for mrows, w_pad in self.micro_batches(rows, batch.attention_mask.sum(-1)):
            mask = batch.mask[mrows].to(dev)
            logp = self.logprobs(self.trainer.model, batch, self.temperature, mrows, grad=True)
            if own is not None:
                batch.old_logp[mrows] = logp.detach().cpu().to(batch.old_logp.dtype)
                filled.append((mrows, batch.old_logp[mrows]))
            pg, st = clipped_surrogate(logp, batch.old_logp[mrows].to(dev), adv[mrows].to(dev), mask, t.clip_eps)
            kl = torch.zeros(())
            if self.ref is not None:
                kl = (k3_kl(logp, batch.ref_logp[mrows].to(dev), t.kl_clamp) * mask).sum(-1).mean()
            # Micro-batches add up to the minibatch loss: the surrogate is a token mean over the minibatch, the KL
            # a mean over its sequences, so each part is weighted by this micro-batch's share of tokens / rows.
            w_tok, w_seq = w_pad * float(mask.sum()) / max(tokens, 1.0), w_pad * len(mrows) / len(rows)
            loss = w_tok * pg + t.kl_coef * w_seq * kl
            if float(st["ratio"].detach()) > t.ratio_threshold:  # a runaway minibatch is skipped, as in the authors' code
                loss = loss * 0.0
            self.trainer.backward(loss)
            for k, v, w in (("loss", loss, 1.0), ("pg_loss", pg, w_tok), ("kl_loss", kl, w_seq),
                            ("clip_frac", st["clip_frac"], w_tok), ("ratio", st["ratio"], w_tok)):
                agg[k] += float(v.detach()) * w
        agg = self.all_sum(agg)                         # data parallel: each process summed its share
        if own is not None and dist.world() > 1:         # every process needs every row's (batch_metrics' KL)
            for r, lp in (p for ps in dist.all_gather(filled) for p in ps):
                batch.old_logp[r] = lp
        agg["grad_norm"] = self.trainer.step()
        agg["lr"] = self.trainer.lr
        self.counts["grad_steps"] += 1
        return agg

    def batch_metrics(self, batch: Rollouts) -> dict[str, float]:
        mask, adv = batch.mask, batch.advantages.adv
        out = {"train_reward": float(batch.rewards.mean()),
               "response_len": float(mask.sum(-1).mean()),
               "finished": sum(x.finished for x in batch.samples) / len(batch.samples),
               "adv_mean": float(masked_mean(adv, mask)),
               "adv_abs": float(masked_mean(adv.abs(), mask))}
        if batch.ref_logp is not None:   # on-policy samples: sequence-level KL(pi || ref) = E[sum_t log pi - log ref]
            out["kl"] = float(((batch.old_logp - batch.ref_logp) * mask).sum(-1).mean())
            out["kl_k3"] = float(k3_kl(batch.old_logp, batch.ref_logp, None).mul(mask).sum(-1).mean())
        return out
