"""The algorithm interface and the plumbing every algorithm shares (prompt batches, padding, log-probs, optimizer).

    algo = algorithms.get(name)(cfg, policy, tokenizer, engine, task)
    batch = algo.collect(iteration)     # may call engine.generate() any number of times
    metrics = algo.update(batch)        # optimizer steps; returns scalar metrics

The run loop (harness/run.py) owns iterations, evaluation, checkpoints, timing and files. An algorithm counts the
tokens it pushes through models in `self.counts` so the run loop can estimate compute, and tags its generate() calls
("generate", "mc_rollouts", ...) so the engine's clock splits generation time by purpose.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections import Counter

import torch
from pydantic import BaseModel, ConfigDict

from algorithms.losses import token_logprobs


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from (run seed, iteration, purpose, ...): every random draw of an iteration depends
    only on these, so a resumed run replays exactly what an uninterrupted one would have drawn."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class Algorithm:
    Config: type[BaseModel] = NoOptions
    name = "?"

    def __init__(self, cfg, policy, tokenizer, engine, task):
        self.cfg, self.policy, self.tokenizer, self.engine, self.task = cfg, policy, tokenizer, engine, task
        self.opts = self.Config.model_validate(cfg.algo)
        self.counts: Counter = Counter()       # forward_tokens, train_tokens, grad_steps (cumulative)
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
    def check_config(cls, cfg) -> None:
        """Rules across config sections (raise ValueError naming key and value); run by harness.config when the
        sweep is validated, before any job starts."""

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "counts": dict(self.counts)}

    def load_state_dict(self, sd: dict) -> None:
        self.policy.load_state_dict(sd["policy"])
        self.opt.load_state_dict(sd["opt"])
        self.sched.load_state_dict(sd["sched"])
        self.counts = Counter(sd["counts"])

    # --- shared plumbing -------------------------------------------------------------------------------------
    def seed(self, *parts) -> int:
        return derive_seed(self.cfg.seed, *parts)

    def prompt_batch(self, iteration: int, n: int | None = None) -> list[dict]:
        """`n` distinct training problems for this iteration (different every iteration, fixed by the seed)."""
        train = self.task.problems("train")
        n = min(n or self.cfg.train.prompts_per_iteration, len(train))
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
        rewards = [self.task.grade(x.text, problems[x.prompt_index]["answer"]) if x.finished else 0.0
                   for x in samples]
        return prompts, samples, rewards

    def seq_logprobs(self, model, batch: dict, temperature: float, rows=None, grad: bool = False) -> torch.Tensor:
        """Sequence log-probs [b]: the sum of the response tokens' log-probs."""
        mask = batch["mask"] if rows is None else batch["mask"][rows]
        return (self.logprobs(model, batch, temperature, rows, grad) * mask.to(self.device)).sum(-1)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def make_optimizer(self, model, lr: float | None = None):
        t = self.cfg.train
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or t.lr,
                                betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay)
        total = max(1, self.total_steps())
        warm = int(math.ceil(t.warmup_ratio * total))

        def factor(step):               # linear warmup, then linear decay to 0 at the last planned step
            if step < warm:
                return (step + 1) / warm
            return 1.0 if t.schedule == "constant" else max(0.0, (total - step) / max(1, total - warm))
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def optimizer_step(self, model, opt, sched) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(grad_norm)

    def pad(self, prompts: list[list[int]], responses: list[list[int]]) -> dict[str, torch.Tensor]:
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
        return {"input_ids": ids, "attention_mask": attn, "mask": mask}

    def logprobs(self, model, batch: dict, temperature: float, rows=None, grad: bool = False) -> torch.Tensor:
        """Token log-probs [b, L-1] of the batch's targets (rows = a subset of rows, e.g. a micro-batch)."""
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if rows is not None:
            ids, attn = ids[rows], attn[rows]
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, self.autocast():
            logits = model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits[:, :-1]
        self.counts["train_tokens" if grad else "forward_tokens"] += int(attn.sum())
        return token_logprobs(logits, ids[:, 1:].to(self.device), temperature)

    def logprobs_batched(self, model, batch: dict, temperature: float) -> torch.Tensor:
        mb = self.cfg.train.micro_batch_size
        n = batch["input_ids"].shape[0]
        return torch.cat([self.logprobs(model, batch, temperature, slice(i, i + mb)) for i in range(0, n, mb)])


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
