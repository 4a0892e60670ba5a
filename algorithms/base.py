"""The algorithm interface and the plumbing every algorithm shares (prompt batches, padding, log-probs, optimizer).

    algo = algorithms.get(name)(cfg, policy, tokenizer, engine, task)
    batch = algo.collect(iteration)     # may call engine.generate() any number of times; any type the update reads
    metrics = algo.update(batch)        # optimizer steps; returns scalar metrics

The run loop (harness/train/loop.py) owns iterations, evaluation, checkpoints, timing and files. An algorithm counts
the tokens it pushes through models in `self.counts` so the run loop can estimate compute, and tags its generate()
calls ("generate", "mc_rollouts", ...) so the engine's clock splits generation time by purpose.

Training goes through a trainer per trained model (harness/runtime/backends.py: torch or DeepSpeed):

    self.trainer = self.make_trainer(policy)
    for rows, w in self.micro_batches(minibatch_rows):      # this process's share (data parallel), weight 0 = padding
        logp = self.logprobs(self.trainer.model, batch, T, rows, grad=True)   # training forwards via the trainer
        self.trainer.backward(w * loss_share_of(rows))
    grad_norm = self.trainer.step()
"""
from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict

from algorithms.losses import token_logprobs
from harness.core.seeding import derive_seed
from harness.runtime import dist
from harness.runtime.backends import build_trainer
from harness.tasks import grade_samples


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Padded:
    """Prompt + response token rows, right-padded (Algorithm.pad): what every forward pass reads. Column j of `mask`
    (and of every per-token tensor built on it) is the prediction of token j + 1, so it has t - 1 columns."""
    input_ids: torch.Tensor         # LongTensor [b, t]: prompt + response ids, then pad_token_id
    attention_mask: torch.Tensor    # LongTensor [b, t]: 1 on the real tokens
    mask: torch.Tensor              # FloatTensor [b, t-1]: 1 where the target is a response token


def check_samples_per_prompt(cfg, reason: str) -> None:
    """For check_config of the methods that compare samples of one prompt (`reason` says why, naming the method)."""
    if cfg.train.samples_per_prompt < 2:
        raise ValueError(f"{reason}: train.samples_per_prompt must be >= 2 (got {cfg.train.samples_per_prompt})")


class Algorithm:
    Config: type[BaseModel] = NoOptions
    name = "?"

    def __init__(self, cfg, policy, tokenizer, engine, task):
        self.cfg, self.policy, self.tokenizer, self.engine, self.task = cfg, policy, tokenizer, engine, task
        self.opts = self.Config.model_validate(cfg.algo)
        self.counts: Counter = Counter()       # forward_tokens, train_tokens, grad_steps (cumulative)
        self.trainers: dict = {}               # name -> trainer (harness/runtime/backends.py); saved by the run loop
        self.device = next(policy.parameters()).device

    # --- the interface -------------------------------------------------------------------------------------
    def collect(self, iteration: int):
        raise NotImplementedError

    def update(self, batch) -> dict[str, float]:
        raise NotImplementedError

    def total_steps(self) -> int:
        """Optimizer steps a full run plans (for the learning-rate schedule)."""
        raise NotImplementedError

    @classmethod
    def problems_per_iteration(cls, cfg) -> int:
        """Distinct training problems one iteration draws (checked against the task's training set)."""
        return cfg.train.prompts_per_iteration

    @classmethod
    def check_config(cls, cfg) -> None:
        """Rules across config sections (raise ValueError naming key and value); run by harness.config when the
        sweep is validated, before any job starts."""

    def state_dict(self) -> dict:
        """Resumable state besides the trainers' (models, optimizers, schedules), which the run loop saves."""
        return {"counts": dict(self.counts)}

    def load_state_dict(self, sd: dict) -> None:
        self.counts = Counter(sd["counts"])

    # --- shared plumbing -------------------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """The temperature training log-probs divide logits by: the sampling one (greedy sampling: T = 1)."""
        return self.cfg.sampling.temperature or 1.0

    def seed(self, *parts) -> int:
        return derive_seed(self.cfg.seed, *parts)

    def prompt_batch(self, iteration: int, n: int | None = None) -> list[dict]:
        """`n` distinct training problems for this iteration (different every iteration, fixed by the seed)."""
        train = self.task.problems("train")
        n = n or self.problems_per_iteration(self.cfg)
        if n > len(train):
            raise ValueError(f"train.prompts_per_iteration={n} is more than the {len(train)} training problems of "
                             f"task {self.cfg.task['name']!r}")
        return random.Random(self.seed(iteration, "prompts")).sample(train, n)

    def sample(self, problems: list[dict], n: int, seed: int, tag: str = "generate"):
        """`n` responses per problem with the training sampling parameters, graded (unfinished = 0).
        Returns (prompt ids per problem, samples ordered by problem, rewards)."""
        s = self.cfg.sampling
        prompts = [self.engine.encode_prompt(self.task.prompt(p)) for p in problems]
        samples = self.engine.generate(prompts, n=n, temperature=s.temperature, top_p=s.top_p,
                                       max_new_tokens=s.max_new_tokens, stop=self.task.stop, seed=seed, tag=tag)
        samples = [x if x.token_ids else x.__class__(x.prompt_index, [self.tokenizer.eos_token_id], "", False)
                   for x in samples]               # an empty response still needs one token to carry its reward
        return prompts, samples, grade_samples(self.task, samples, problems)

    def seq_logprobs(self, model, batch: Padded, temperature: float, rows=None, grad: bool = False) -> torch.Tensor:
        """Sequence log-probs [b]: the sum of the response tokens' log-probs."""
        mask = batch.mask if rows is None else batch.mask[rows]
        return (self.logprobs(model, batch, temperature, rows, grad) * mask.to(self.device)).sum(-1)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def make_trainer(self, model, lr: float | None = None, name: str = "policy"):
        """AdamW (betas 0.9/0.999, eps 1e-8) with warmup + linear decay over total_steps() and grad clipping, on the
        configured backend (torch or DeepSpeed). Build frozen copies of `model` (reference, critic body) first:
        ZeRO-3 partitions its weights in place."""
        self.trainers[name] = build_trainer(self.cfg, model, lr or self.cfg.train.lr, max(1, self.total_steps()))
        return self.trainers[name]

    def micro_batches(self, rows: torch.Tensor,
                      lengths: torch.Tensor | None = None) -> list[tuple[torch.Tensor, float]]:
        """`rows` (a minibatch's row indices) as (micro-batch rows, weight 1.0) pairs of train.micro_batch_size.
        With `lengths` (every batch row's sequence length) rows of similar length share a micro-batch, longest first,
        which the forward passes trim to its longest row: less padding, the same sums.
        Data parallel (several processes): this process's share, rows[rank::world]; every process gets the same
        number of micro-batches because ZeRO communicates inside forward/backward, so a process short of rows
        repeats one with weight 0 (its passes are real work and are counted as such)."""
        mb, W = self.cfg.train.micro_batch_size, dist.world()
        if lengths is not None:
            rows = rows[torch.argsort(lengths[rows], descending=True, stable=True)]
        share = rows[dist.rank()::W]
        per_process = -(-len(rows) // W)                       # ceil: the largest share
        n_micro = -(-per_process // mb)
        chunks = [share[i * mb:(i + 1) * mb] for i in range(n_micro)]
        return [(c, 1.0) if len(c) else (rows[:1], 0.0) for c in chunks]

    def map_rows(self, fn, n: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """fn(rows) for every micro-batch of rows 0..n-1 (grouped by `lengths`, as micro_batches), put together in
        row order on the CPU, where batches live (micro-batches move to the device when used); data parallel: each
        process computes its share, results all-gathered."""
        parts = [(rows, fn(rows).cpu()) for rows, w in self.micro_batches(torch.arange(n), lengths) if w]
        gathered = parts if dist.world() == 1 else [p for ps in dist.all_gather(parts) for p in ps]
        out = torch.empty((n,) + gathered[0][1].shape[1:], dtype=gathered[0][1].dtype)
        for rows, o in gathered:
            out[rows] = o
        return out

    @staticmethod
    def all_sum(stats: dict[str, float]) -> dict[str, float]:
        """Sum per-process shares of a minibatch's metrics (no-op in one process)."""
        return dist.all_sum(stats)

    def pad(self, prompts: list[list[int]], responses: list[list[int]]) -> Padded:
        """Right-padded prompt+response ids and a `mask` [B, L-1] over the positions whose *target* is a response
        token (logits at position t predict token t+1)."""
        seqs = [p + r for p, r in zip(prompts, responses)]
        B, L = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((B, L), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        mask = torch.zeros((B, L - 1))
        for b, (p, s) in enumerate(zip(prompts, seqs)):
            ids[b, :len(s)] = torch.tensor(s)
            attn[b, :len(s)] = 1
            mask[b, len(p) - 1:len(s) - 1] = 1
        return Padded(ids, attn, mask)

    def logprobs(self, model, batch: Padded, temperature: float, rows=None, grad: bool = False) -> torch.Tensor:
        """Token log-probs [b, L-1] of the batch's targets (rows = a subset of rows, e.g. a micro-batch)."""
        ids, attn, L = *trim(batch, rows), batch.input_ids.shape[1]
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, self.autocast():
            logits = model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits[:, :-1]
        self.counts["train_tokens" if grad else "forward_tokens"] += int(attn.sum())
        return pad_columns(token_logprobs(logits, ids[:, 1:].to(self.device), temperature), L - 1)

    def logprobs_batched(self, model, batch: Padded, temperature: float) -> torch.Tensor:
        return self.map_rows(lambda rows: self.logprobs(model, batch, temperature, rows), len(batch.input_ids),
                             batch.attention_mask.sum(-1))


def trim(batch: Padded, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of `rows`, without the trailing columns that are padding in every one of them
    (right padding: positions are unchanged, so every real token's output is too)."""
    ids, attn = batch.input_ids, batch.attention_mask
    if rows is not None:
        ids, attn = ids[rows], attn[rows]
    n = int(attn.any(0).nonzero().max()) + 1
    return ids[:, :n], attn[:, :n]


def pad_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    """[b, n] -> [b, width] with zeros on the right: a trimmed pass's output aligned with the batch's columns."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def token_char_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Start character of every token of `ids` in tokenizer.decode(ids): the map from step boundaries (characters)
    to tokens. Fast path: tokens that decode independently (char-level, most BPE text); exact fallback otherwise
    (byte-level BPE splitting a multi-byte character across tokens)."""
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if "".join(pieces) == full:
        out, pos = [], 0
        for p in pieces:
            out.append(pos)
            pos += len(p)
        return out
    return [len(tokenizer.decode(ids[:i], skip_special_tokens=True)) for i in range(len(ids))]
