"""A run's checkpoints: checkpoints/latest.pt (the loop state, the algorithm's state, the metrics row count and which
checkpoints/<tag>/ holds the trainers' models, optimizers and schedules), weight snapshots for analysis
(checkpoints/iter_XXXXXX.pt) and the final HF save (final/). Every write is atomic: a crash anywhere leaves the
previous checkpoint in force."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from harness.core.metrics import MetricsLog, safe_load
from harness.runtime import dist, models


def full_policy(algo, policy):
    """The policy with all its weights in place: through its trainer (ZeRO-3 gathers shards), or the module itself
    while the algorithm holds no policy trainer (DPO before its pairs exist, RestEM between iterations)."""
    tr = algo.trainers.get("policy")
    return tr.full_model() if tr else contextlib.nullcontext(policy)


class Checkpoints:
    def __init__(self, run_dir: Path, algo, policy, tokenizer, metrics: MetricsLog):
        self.dir, self.algo, self.policy, self.tokenizer, self.metrics = run_dir, algo, policy, tokenizer, metrics
        self.main = dist.is_main()                           # process 0 writes every file
        self.latest = run_dir / "checkpoints" / "latest.pt"

    def save(self, state: dict, trainers: bool = True) -> None:
        """Trainers (every process: DeepSpeed writes per-process shards) into a fresh checkpoints/<tag>/, then
        latest.pt, naming that tag, replaced atomically. trainers=False (nothing trained since the last save)
        rewrites latest.pt only. Records the tag and the metrics row count in `state`."""
        ck = self.latest.parent
        ck.mkdir(parents=True, exist_ok=True)              # (an algorithm may hold no trainer: RestEM)
        if trainers or "tag" not in state:
            state["saves"] += 1
            state["tag"] = f"save{state['saves']}"
            for name, tr in self.algo.trainers.items():
                tr.save(ck / state["tag"] / name)
            dist.barrier()
        if self.main:
            state["rows"] = self.metrics.rows()
            state["rows_sha"] = self.metrics.checksum(state["rows"])
            tmp = self.latest.with_suffix(".tmp")
            torch.save({"algo": self.algo.state_dict(), "loop": dict(state)}, tmp)
            os.replace(tmp, self.latest)
            for old in ck.iterdir():
                if old.is_dir() and old.name != state["tag"]:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def resume(self, device: torch.device, run_id: str) -> dict | None:
        """The saved loop state with the algorithm and trainers restored and metrics.jsonl cut back to the rows the
        checkpoint counted; None (metrics.jsonl emptied) when the run never checkpointed."""
        state = None
        if self.latest.exists():
            ck = safe_load(self.latest, device)
            self.algo.load_state_dict(ck["algo"])
            state = ck["loop"]
            for name, tr in self.algo.trainers.items():
                tr.load(self.latest.parent / state["tag"] / name)
            if self.main:
                self.metrics.truncate(state["rows"], state.get("rows_sha"))
                print(f"[{run_id}] resumed at iteration {state['iteration']}", flush=True)
        elif self.main and self.metrics.path.exists():
            self.metrics.truncate(0)                        # started before but never checkpointed: start over
        dist.barrier()                                      # every process reads metrics.jsonl after this
        return state

    def full_policy(self):
        return full_policy(self.algo, self.policy)

    def snapshot(self, iteration: int, every: int, last: int, algorithm: str) -> None:
        """`train.keep_every`: keep the weights at iterations 0, N, 2N, ... and the last one (what harness.analyze
        needs to study values *during* training). Weights only: snapshots are for analysis, not for resuming."""
        if not every or (iteration % every and iteration != last):
            return
        path = self.latest.parent / f"iter_{iteration:06d}.pt"
        exists = path.exists()
        dist.barrier()                                      # every process decided before process 0 writes
        if exists:
            return
        snap = {"iteration": iteration, "algorithm": algorithm}
        for name in ("policy", "critic"):
            if name == "policy" or name in self.algo.trainers:
                with (self.full_policy() if name == "policy" else self.algo.trainers[name].full_model()) as model:
                    if self.main:                           # (collective under ZeRO-3)
                        snap[name] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if self.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(snap, tmp)
            os.replace(tmp, path)
        dist.barrier()

    def save_final(self) -> None:
        """HF save_pretrained of the policy: consolidated (ZeRO-3 gathers the shards), written by process 0."""
        final, tmp = self.dir / "final", self.dir / "final.tmp"
        with self.full_policy() as model:
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
                models.save(model, self.tokenizer, tmp)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        dist.barrier()
