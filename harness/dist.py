"""Data parallelism across the processes of one run (launched by torchrun or the deepspeed launcher).

Every process runs the same loop on the same batch: generation is split across processes and all-gathered
(`ShardedEngine`), log-prob / value / training passes are split by rows (`Algorithm.micro_batches`) and their results
all-gathered or their gradients reduced by DeepSpeed. Process 0 writes every file. With one process (the default)
nothing here communicates and nothing changes.
"""
from __future__ import annotations

import os
import socket
from collections import defaultdict

import torch
import torch.distributed as tdist


def world() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init(force: bool = False) -> None:
    """Join the process group the launcher describes (WORLD_SIZE > 1), or with `force` (DeepSpeed needs a group
    even alone) create a one-process group on a free local port. Idempotent: later runs in the process reuse it."""
    if force:
        os.environ.setdefault("LOCAL_RANK", "0")               # DeepSpeed asserts it is set
    if tdist.is_initialized() or (int(os.environ.get("WORLD_SIZE", 1)) == 1 and not force):
        return                                                 # (vLLM may have made a one-process group)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "MASTER_ADDR" in os.environ:                            # torchrun / deepspeed launcher
        tdist.init_process_group(backend)
        return
    with socket.socket() as s:                                 # alone: a free local port, and no WORLD_SIZE or
        s.bind(("127.0.0.1", 0))                               # MASTER_* variables for the processes this one
        port = s.getsockname()[1]                              # may launch to inherit
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def launched_processes() -> int:
    """Processes the launcher (torchrun) started for this run; 1 when started directly."""
    return int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    if world() > 1:
        tdist.barrier()


def all_gather(obj) -> list:
    """Every process's `obj` (any picklable value), in rank order."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def all_sum(d: dict[str, float]) -> dict[str, float]:
    """Sum each value over processes (per-process shares of a minibatch's loss, token counts)."""
    if world() == 1:
        return d
    total: dict[str, float] = defaultdict(float)
    for part in all_gather(d):
        for k, v in part.items():
            total[k] += v
    return dict(total)


class ShardedEngine:
    """Wraps a generation engine: each process generates a contiguous share of the requests (in lexicographic
    order, so shared prefixes stay on one process), and every process receives all samples, in the order the
    wrapped engine's interface promises. Token counts are summed over processes, seconds are this process's."""

    def __init__(self, engine):
        from harness.engines.hf import EngineStats
        self.inner = engine
        self.stats = EngineStats()

    def encode_prompt(self, text: str) -> list[int]:
        return self.inner.encode_prompt(text)

    def sync(self, model) -> None:
        self.inner.sync(model)

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=64, stop=(), seed=0, tag="generate"):
        from algorithms.base import derive_seed
        from harness.engines.hf import Sample
        W, r = world(), rank()
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        mine = order[r * len(order) // W:(r + 1) * len(order) // W]
        out = self.inner.generate([prompts[i] for i in mine], n=n, temperature=temperature, top_p=top_p,
                                  max_new_tokens=[budgets[i] for i in mine], stop=stop, seed=derive_seed(seed, r),
                                  tag=tag)
        st = self.inner.stats.pop()
        result: list = [None] * (len(prompts) * n)
        for idx, samples, new, pre in all_gather((mine, out, st.new_tokens[tag], st.prompt_tokens[tag])):
            for k, i in enumerate(idx):
                for j in range(n):
                    s = samples[k * n + j]
                    result[i * n + j] = Sample(i, s.token_ids, s.text, s.finished)
            self.stats.new_tokens[tag] += new
            self.stats.prompt_tokens[tag] += pre
        self.stats.seconds[tag] += st.seconds[tag]
        return result
