"""HF generation engine: batched sampling with a KV cache on the training model itself (no weight sync needed).

A plain decode loop instead of `model.generate` because the RL workloads here are many short, ragged requests:
requests are sorted by prompt length into chunks (little left padding), each row stops at EOS, a stop string or
its own token budget, and finished rows are dropped from the batch and the KV cache as they finish, so a chunk
costs what its live rows cost rather than what its longest row costs.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import DynamicCache


@dataclass
class Sample:
    prompt_index: int             # index into the `prompts` list passed to generate()
    token_ids: list[int]          # response tokens as sampled; ends with EOS when finished
    text: str                     # decoded response (no EOS, cut before any stop string)
    finished: bool                # stopped by EOS or a stop string (False: ran out of token budget)


@dataclass
class EngineStats:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    new_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    prompt_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def pop(self) -> "EngineStats":
        out = EngineStats(self.seconds, self.new_tokens, self.prompt_tokens)
        self.seconds, self.new_tokens, self.prompt_tokens = defaultdict(float), defaultdict(int), defaultdict(int)
        return out


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p          # smallest prefix whose mass reaches top_p (first always kept)
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class HFEngine:
    def __init__(self, model, tokenizer, chunk_size: int = 1024, progress: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.chunk_size, self.progress = chunk_size, progress
        self.stats = EngineStats()

    def sync(self, model) -> None:
        """The HF engine samples from the training model object itself; nothing to copy."""
        self.model = model

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int | list[int] = 64, stop: tuple[str, ...] = (), seed: int = 0,
                 tag: str = "generate") -> list[Sample]:
        """Sample `n` continuations of every prompt. Returns len(prompts) * n samples ordered by prompt, then by
        sample. `max_new_tokens` may be a per-prompt list (MC rollouts from deep prefixes get less budget)."""
        t0 = time.perf_counter()
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        rows = [(i, j) for i in range(len(prompts)) for j in range(n) if budgets[i] > 0]
        rows.sort(key=lambda r: len(prompts[r[0]]))    # length bucketing: neighbours have similar prompt lengths
        gen = torch.Generator().manual_seed(seed)
        out: dict[tuple[int, int], Sample] = {}
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(rows), desc=tag, unit="seq", disable=not self.progress or len(rows) < 2048,
                   mininterval=2, leave=False)
        for c in range(0, len(rows), self.chunk_size):
            chunk = rows[c:c + self.chunk_size]
            toks = self._decode_chunk([prompts[i] for i, _ in chunk], [budgets[i] for i, _ in chunk],
                                      temperature, top_p, stop, gen)
            for (i, j), t in zip(chunk, toks):
                out[(i, j)] = self._finish(i, t, stop)
            bar.update(len(chunk))
            self.stats.prompt_tokens[tag] += sum(len(prompts[i]) for i, _ in chunk)
            self.stats.new_tokens[tag] += sum(len(t) for t in toks)
        bar.close()
        self.model.train(was_training)
        self.stats.seconds[tag] += time.perf_counter() - t0
        return [out.get((i, j)) or Sample(i, [], "", False) for i in range(len(prompts)) for j in range(n)]

    def _finish(self, prompt_index: int, ids: list[int], stop: tuple[str, ...]) -> Sample:
        eos = self.tokenizer.eos_token_id
        finished = bool(ids) and ids[-1] == eos
        text = self.tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=True)
        for s in stop:
            k = text.find(s)
            if k >= 0:
                text, finished = text[:k], True
                # Keep the shortest token prefix that covers the text before the stop string, then close with EOS.
                for cut in range(len(ids) + 1):
                    if len(self.tokenizer.decode(ids[:cut], skip_special_tokens=True)) >= k:
                        break
                ids = ids[:cut] + [eos]
        return Sample(prompt_index, ids, text, finished)

    def _decode_chunk(self, prompts, budgets, temperature, top_p, stop, gen) -> list[list[int]]:
        model, tok = self.model, self.tokenizer
        dev = next(model.parameters()).device
        B, L = len(prompts), max(len(p) for p in prompts)
        pad = tok.pad_token_id
        ids = torch.full((B, L), pad, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prompts):                 # left padding
            ids[b, L - len(p):] = torch.tensor(p)
            attn[b, L - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits[:, -1]
        live = torch.arange(B)                          # original row of each live batch row
        budget = torch.tensor(budgets)
        buf = torch.full((B, int(budget.max())), -1, dtype=torch.long)
        next_pos = pos[:, -1].cpu() + 1
        eos = tok.eos_token_id
        max_stop = max((len(s) for s in stop), default=0)
        step = 0
        while len(live):
            nxt = sample_tokens(logits, temperature, top_p, gen).cpu()
            buf[live, step] = nxt
            step += 1
            done = (nxt == eos) | (budget[live] <= step)
            if max_stop:                                # stop strings: decode only the tail of each live row
                tails = tok.batch_decode(buf[live, max(0, step - max_stop):step].tolist())
                done |= torch.tensor([any(s in t for s in stop) for t in tails])
            if done.all():
                break
            if done.any():                              # drop finished rows from the batch and the cache
                keep = (~done).nonzero().squeeze(-1)
                live, nxt, next_pos, attn = live[keep], nxt[keep], next_pos[keep], attn[keep.to(dev)]
                cache.batch_select_indices(keep.to(dev))
            attn = torch.cat([attn, torch.ones((len(live), 1), dtype=attn.dtype, device=dev)], dim=1)
            logits = model(input_ids=nxt.view(-1, 1).to(dev), attention_mask=attn,
                           position_ids=next_pos.view(-1, 1).to(dev), past_key_values=cache,
                           use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        return [[t for t in row if t >= 0] for row in buf.tolist()]
