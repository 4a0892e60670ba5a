"""Data-parallel generation: one engine per process, each generating a share of the requests."""
from __future__ import annotations

from harness.core.seeding import derive_seed
from harness.runtime import dist
from harness.runtime.engines.hf import EngineStats, Sample


class ShardedEngine:
    """Wraps a generation engine: each process generates a contiguous share of the requests (in lexicographic
    order, so shared prefixes stay on one process), and every process receives all samples, in the order the
    wrapped engine's interface promises. Token counts are summed over processes, seconds are this process's."""

    def __init__(self, engine):
        self.inner = engine
        self.stats = EngineStats()

    def encode_prompt(self, text: str) -> list[int]:
        return self.inner.encode_prompt(text)

    def sync(self, model) -> None:
        self.inner.sync(model)

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=64, stop=(), seed=0, tag="generate"):
        W, r = dist.world(), dist.rank()
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        mine = order[r * len(order) // W:(r + 1) * len(order) // W]
        out = self.inner.generate([prompts[i] for i in mine], n=n, temperature=temperature, top_p=top_p,
                                  max_new_tokens=[budgets[i] for i in mine], stop=stop, seed=derive_seed(seed, r),
                                  tag=tag)
        st = self.inner.stats.pop()
        result: list = [None] * (len(prompts) * n)
        for idx, samples, new, pre in dist.all_gather((mine, out, st.new_tokens[tag], st.prompt_tokens[tag])):
            for k, i in enumerate(idx):
                for j in range(n):
                    s = samples[k * n + j]
                    result[i * n + j] = Sample(i, s.token_ids, s.text, s.finished)
            self.stats.new_tokens[tag] += new
            self.stats.prompt_tokens[tag] += pre
        self.stats.seconds[tag] += st.seconds[tag]
        return result
