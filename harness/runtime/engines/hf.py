"""HF generation engine: batched sampling with a KV cache on the training model itself (no weight sync needed).

A plain decode loop instead of `model.generate` because the RL workloads here are many short, ragged requests
with shared prefixes (K rollouts of a state; the nested step states of one response): prompts that are prefixes of
other prompts in a chunk get their keys/values from one shared prefill (prefix caching), each row stops at EOS, a
stop string or its own token budget, and finished rows are dropped from the batch and the KV cache (in batches,
once a quarter has finished, along with the left padding no live row needs), so a chunk costs about what its live
rows cost, not what its longest row costs.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from harness.runtime.models import check_fresh, prompt_ids, weights_version


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


class BufferedLayer(DynamicLayer):
    """A KV-cache layer that appends into preallocated room (doubling when full) instead of concatenating the whole
    cache at every decode step, which made copies the largest cost of short-sequence decoding on CPU."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.n = keys.shape[-2]
        self.buf_k = self._alloc(keys, self.n + room)
        self.buf_v = self._alloc(values, self.n + room)
        self.device, self.is_initialized = keys.device, True
        self._views()

    @staticmethod
    def _alloc(t: torch.Tensor, cap: int) -> torch.Tensor:
        out = t.new_empty(t.shape[:-2] + (cap, t.shape[-1]))
        out[..., :t.shape[-2], :] = t
        return out

    def _views(self):
        self.keys, self.values = self.buf_k[..., :self.n, :], self.buf_v[..., :self.n, :]

    def update(self, key_states, value_states, *args, **kwargs):
        q = key_states.shape[-2]
        if self.n + q > self.buf_k.shape[-2]:
            self.buf_k = self._alloc(self.keys, 2 * (self.n + q))
            self.buf_v = self._alloc(self.values, 2 * (self.n + q))
        self.buf_k[..., self.n:self.n + q, :] = key_states
        self.buf_v[..., self.n:self.n + q, :] = value_states
        self.n += q
        self._views()
        return self.keys, self.values

    def select(self, indices: torch.Tensor, start: int = 0):
        """Keep the rows `indices` and the positions from `start` on (left padding no kept row needs). Copies only
        the kept rows' filled positions; the spare room is allocated, not copied."""
        cap = self.buf_k.shape[-2] - start
        keys, values = self.keys[indices, :, start:], self.values[indices, :, start:]
        self.buf_k, self.buf_v = self._alloc(keys, cap), self._alloc(values, cap)
        self.n -= start
        self._views()

    def batch_select_indices(self, indices: torch.Tensor):
        self.select(indices)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator,
                  nucleus_k: int = 256) -> torch.Tensor:
    """One token per row from softmax(logits / T), restricted to the top-p nucleus (the smallest set of most likely
    tokens whose mass reaches top_p). Inverse-CDF sampling (one uniform per row, a float64 cumsum and a binary
    search) instead of torch.multinomial, ~4x faster on a 49k vocabulary; the nucleus is looked for among the
    `nucleus_k` most likely tokens (a top-k, not a full sort) and only rows whose nucleus is wider get the sort."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device, dtype=torch.float64)
    if top_p >= 1.0:
        return _inverse_cdf(probs, u)
    sp, si = probs.topk(min(nucleus_k, probs.shape[-1]), dim=-1)    # sorted, most likely first
    wide = sp.sum(-1) < top_p                               # rows whose nucleus reaches beyond the top k
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    if (~wide).any():
        out[~wide] = _nucleus(sp[~wide], si[~wide], top_p, u[~wide])
    if wide.any():
        out[wide] = _nucleus(*probs[wide].sort(dim=-1, descending=True), top_p, u[wide])
    return out


def _nucleus(p: torch.Tensor, idx: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Sample from rows of probabilities `p` sorted in decreasing order (token ids `idx`), cut to the nucleus."""
    keep = p.cumsum(-1) - p < top_p                          # smallest prefix whose mass reaches top_p
    return idx.gather(-1, _inverse_cdf(p * keep, u)[:, None]).squeeze(-1)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index i of each row with probability weights[i] / sum(weights), for uniforms u in [0, 1) (one per row)."""
    cdf = weights.double().cumsum(-1)
    total = cdf[:, -1:]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))     # strictly below the total
    return torch.searchsorted(cdf, x, right=True).squeeze(-1)    # first cdf > x: zero-weight tokens never drawn


def finish_sample(tokenizer, prompt_index: int, ids: list[int], stop: tuple[str, ...]) -> Sample:
    """Sample from raw generated ids (every engine): text cut before the first stop string, ids cut to the shortest
    prefix covering that text and closed with EOS; finished = ended by EOS or a stop string."""
    eos = tokenizer.eos_token_id
    finished = bool(ids) and ids[-1] == eos
    text = tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=True)
    for s in stop:
        k = text.find(s)
        if k >= 0:
            text, finished = text[:k], True
            # Keep the shortest token prefix that covers the text before the stop string, then close with EOS.
            for cut in range(len(ids) + 1):
                if len(tokenizer.decode(ids[:cut], skip_special_tokens=True)) >= k:
                    break
            ids = ids[:cut] + [eos]
    return Sample(prompt_index, ids, text, finished)


class HFEngine:
    def __init__(self, model, tokenizer, chunk_size: int = 1024, progress: bool = True, attn: str | None = None,
                 source=None):
        self.model, self.tokenizer = model, tokenizer
        self.chunk_size, self.progress = chunk_size, progress
        self.attn = attn            # attention while decoding; the model's own is restored for training
        # With its own copy (ZeRO-3): the training policy it copies, and the weights version it last copied.
        self.source, self.synced = source, weights_version(source) if source is not None else 0
        self.stats = EngineStats()

    def sync(self, model) -> None:
        """Sampling from the training model itself (the default): nothing to do. From its own copy (ZeRO-3): copy the
        weights in, in place."""
        if model is self.model:
            return
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                own[name].copy_(p)
        self.source, self.synced = model, weights_version(model)     # the policy it now holds a copy of

    def encode_prompt(self, text: str) -> list[int]:
        return prompt_ids(self.tokenizer, text)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int | list[int] = 64, stop: tuple[str, ...] = (), seed: int = 0,
                 tag: str = "generate") -> list[Sample]:
        """Sample `n` continuations of every prompt. Returns len(prompts) * n samples ordered by prompt, then by
        sample. `max_new_tokens` may be a per-prompt list (MC rollouts from deep prefixes get less budget)."""
        check_fresh(self.source, self.synced)
        t0 = time.perf_counter()
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        rows = [(i, j) for i in range(len(prompts)) for j in range(n) if budgets[i] > 0]
        # Lexicographic order: a chunk holds the nested step prefixes of the same responses (shared prefill).
        rows.sort(key=lambda r: prompts[r[0]])
        gen = torch.Generator(next(self.model.parameters()).device).manual_seed(seed)   # on the logits' device
        out: dict[tuple[int, int], Sample] = {}
        was_training, attn = self.model.training, self.model.config._attn_implementation
        self.model.eval()
        if self.attn and self.attn != attn:
            self.model.set_attn_implementation(self.attn)
        bar = tqdm(total=len(rows), desc=tag, unit="seq", disable=not self.progress or len(rows) < 2048,
                   mininterval=2, leave=False)
        try:
            for c in range(0, len(rows), self.chunk_size):
                chunk = rows[c:c + self.chunk_size]
                toks = self._decode_chunk([prompts[i] for i, _ in chunk], [budgets[i] for i, _ in chunk],
                                          temperature, top_p, stop, gen)
                for (i, j), t in zip(chunk, toks):
                    out[(i, j)] = self._finish(i, t, stop)
                bar.update(len(chunk))
                self.stats.prompt_tokens[tag] += sum(len(prompts[i]) for i, _ in chunk)
                self.stats.new_tokens[tag] += sum(len(t) for t in toks)
        finally:
            bar.close()
            self.model.train(was_training)
            if self.model.config._attn_implementation != attn:      # training keeps the model's own attention
                self.model.set_attn_implementation(attn)
        self.stats.seconds[tag] += time.perf_counter() - t0
        return [out.get((i, j)) or Sample(i, [], "", False) for i in range(len(prompts)) for j in range(n)]

    def _finish(self, prompt_index: int, ids: list[int], stop: tuple[str, ...]) -> Sample:
        return finish_sample(self.tokenizer, prompt_index, ids, stop)

    @staticmethod
    def _roots(prompts: list[list[int]]) -> tuple[list[int], list[int]]:
        """Indices of the prompts that are no other prompt's prefix ("leaves"), and for every prompt a leaf that
        extends it. In lexicographic order a prompt's extensions follow it contiguously, and the last of that
        block is a leaf."""
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        leaf_of = [0] * len(prompts)
        for a, i in enumerate(order):
            q, j = prompts[i], a
            while j + 1 < len(order) and prompts[order[j + 1]][:len(q)] == q:
                j += 1
            leaf_of[i] = order[j]
        leaves = sorted(set(leaf_of))
        pos = {leaf: k for k, leaf in enumerate(leaves)}
        return leaves, [pos[leaf_of[i]] for i in range(len(prompts))]

    def _prefill(self, prompts: list[list[int]], budgets: list[int]):
        """Prefix-shared prefill: run only the leaf prompts (right-padded, one forward), then give every row the
        first len(prompt) keys/values of its leaf, left-aligned into a left-padded cache. The K rollouts of a state
        and all the nested step states of one response cost one forward pass together."""
        model, dev = self.model, next(self.model.parameters()).device
        leaves, leaf_idx = self._roots(prompts)
        Lr = max(len(prompts[i]) for i in leaves)
        ids = torch.full((len(leaves), Lr), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(leaves), Lr), dtype=torch.long)
        for k, i in enumerate(leaves):
            ids[k, :len(prompts[i])] = torch.tensor(prompts[i])
            mask[k, :len(prompts[i])] = 1
        leaf_cache = DynamicCache()
        hidden = model.get_decoder()(input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=leaf_cache,
                                     use_cache=True).last_hidden_state
        lens = torch.tensor([len(p) for p in prompts])
        L = int(lens.max())
        rows = torch.tensor(leaf_idx)
        # Llama-family heads: logits = lm_head(final hidden state) at each row's last prompt position.
        logits = model.get_output_embeddings()(hidden[rows.to(dev), (lens - 1).to(dev)])
        src = torch.arange(L)[None, :] - (L - lens)[:, None]         # leaf position of each padded slot
        valid = src >= 0
        src = src.clamp(min=0)
        layers = []
        for layer in leaf_cache.layers:
            kv = []
            for t in (layer.keys, layer.values):                       # [leaves, heads, Lr, dim]
                g = t.permute(0, 2, 1, 3)[rows[:, None].to(dev), src.to(dev)]   # [B, L, heads, dim]
                kv.append((g * valid[..., None, None].to(dev, g.dtype)).permute(0, 2, 1, 3))
            layers.append(BufferedLayer(kv[0], kv[1], room=max(budgets)))
        cache = DynamicCache()
        cache.layers = layers
        return cache, valid.long().to(dev), logits, lens.clone()

    def _decode_chunk(self, prompts, budgets, temperature, top_p, stop, gen) -> list[list[int]]:
        tok, dev = self.tokenizer, next(self.model.parameters()).device
        B = len(prompts)
        cache, attn, logits, next_pos = self._prefill(prompts, budgets)
        live = torch.arange(B)                          # original row of each batch row
        alive = torch.ones(B, dtype=torch.bool)         # batch rows still generating
        budget = torch.tensor(budgets)
        buf = torch.full((B, int(budget.max())), -1, dtype=torch.long)
        eos = tok.eos_token_id
        max_stop = max((len(s) for s in stop), default=0)
        step = 0
        while True:
            nxt = sample_tokens(logits, temperature, top_p, gen).cpu()
            buf[live[alive], step] = nxt[alive]
            step += 1
            done = (nxt == eos) | (budget[live] <= step)
            if max_stop:                                # stop strings: decode only the tail of each row
                tails = tok.batch_decode(buf[live, max(0, step - max_stop):step].clamp(min=0).tolist())
                done |= torch.tensor([any(s in t for s in stop) for t in tails])
            alive &= ~done
            if not alive.any():
                break
            if (~alive).sum() * 4 >= len(alive):        # compact once a quarter of the rows has finished
                keep = alive.nonzero().squeeze(-1)
                live, nxt, next_pos, attn, alive = live[keep], nxt[keep], next_pos[keep], attn[keep.to(dev)], alive[keep]
                # Deep states finish first (small budgets): drop the left padding that only they needed, so that
                # attention reads only positions some live row attends to (positions are explicit: no shift).
                start = int(attn.any(0).long().argmax())
                attn = attn[:, start:]
                for layer in cache.layers:
                    layer.select(keep.to(dev), start)
            attn = torch.cat([attn, torch.ones((len(live), 1), dtype=attn.dtype, device=dev)], dim=1)
            logits = self.model(input_ids=nxt.view(-1, 1).to(dev), attention_mask=attn,
                                position_ids=next_pos.view(-1, 1).to(dev), past_key_values=cache,
                                use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        return [[t for t in row if t >= 0] for row in buf.tolist()]
