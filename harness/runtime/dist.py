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

