"""Building a run from its config: the task, the starting weights, the generation engine and the algorithm, in the
order the run needs them (the engine before any trainer wraps the policy). The run loop and harness.analyze both
build through `build`, so an analysed snapshot sits in exactly the objects its run trained."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import algorithms
from algorithms.base import Algorithm
from harness import tasks
from harness.config import ModelConfig, RunConfig
from harness.core import gate
from harness.runtime import dist, models
from harness.runtime.engines.hf import HFEngine
from harness.runtime.engines.sharded import ShardedEngine


def build_task(cfg: RunConfig):
    cls = tasks.get(cfg.task["name"])
    return cls(cls.Config(**cfg.task))


def start_weights(cfg: RunConfig, run_dir: Path) -> ModelConfig:
    """The model config to load: `model.init_run` (another run of the sweep) resolved to that run's final weights,
    once its start gate (`model.init_require`) is passed."""
    mcfg = cfg.model
    if not mcfg.init_run:
        return mcfg
    start = run_dir.parent / mcfg.init_run / "final"
    if not (start / "config.json").exists():
        raise FileNotFoundError(f"{run_dir}: model.init_run {mcfg.init_run!r} has no final checkpoint at "
                                f"{start} (did that run finish?)")
    why = gate.check(start.parent, mcfg.init_require and mcfg.init_require.model_dump())
    if why:
        raise gate.GateError(why)
    return mcfg.model_copy(update={"init_run": None, "init_require": None, "path": str(start)})


def build_engine(cfg: RunConfig, policy, tokenizer):
    """The configured engine. `hf` samples from the training model itself, except under ZeRO-3, whose partitioned
    weights cannot decode row by row on each process: then it keeps its own copy, refreshed by sync(). `vllm`
    always holds its own copy. Several processes: each generates a share of the requests."""
    e = cfg.engine
    if e.name == "vllm":
        from harness.runtime.engines.vllm import VLLMEngine   # lazy: vllm is an optional install (.venv-vllm)
        engine = VLLMEngine(policy, tokenizer, e, cfg.progress)
    else:
        own_copy = cfg.backend.name == "deepspeed" and cfg.backend.zero_stage == 3
        engine = HFEngine(models.frozen_copy(policy) if own_copy else policy, tokenizer, e.chunk_size, cfg.progress,
                          e.attn_implementation, source=policy if own_copy else None)
    return ShardedEngine(engine) if dist.world() > 1 else engine


@dataclass
class Built:
    task: object
    tokenizer: object
    policy: torch.nn.Module
    device: torch.device
    engine: object
    algo: Algorithm


def build(cfg: RunConfig, run_dir: Path) -> Built:
    task = build_task(cfg)
    mcfg = start_weights(cfg, run_dir)
    torch.manual_seed(cfg.seed)
    tokenizer, policy = models.load(mcfg, seed=cfg.seed)
    device = dist.device()
    policy.to(device)
    engine = build_engine(cfg, policy, tokenizer)
    algo = algorithms.get(cfg.algorithm)(cfg, policy, tokenizer, engine, task)
    return Built(task, tokenizer, policy, device, engine, algo)
