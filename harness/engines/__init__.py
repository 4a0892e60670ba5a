"""Generation engines (same interface: generate / encode_prompt / sync / stats). `build` picks the configured one."""
from __future__ import annotations

from harness import dist


def build(cfg, policy, tokenizer):
    """The configured engine, built before any trainer wraps the policy. `hf` samples from the training model
    itself, except under ZeRO-3, whose partitioned weights cannot decode row by row on each process: then it keeps
    its own copy, refreshed by sync(). `vllm` always holds its own copy. Several processes: each generates a share
    of the requests (harness/dist.py)."""
    e = cfg.engine
    if e.name == "vllm":
        from harness.engines.vllm import VLLMEngine
        engine = VLLMEngine(policy, tokenizer, e, cfg.progress)
    else:
        from harness.engines.hf import HFEngine
        from harness.models import frozen_copy
        own_copy = cfg.backend.name == "deepspeed" and cfg.backend.zero_stage == 3
        engine = HFEngine(frozen_copy(policy) if own_copy else policy, tokenizer, e.chunk_size, cfg.progress,
                          e.attn_implementation, source=policy if own_copy else None)
    return dist.ShardedEngine(engine) if dist.world() > 1 else engine
