"""One run's loop: iterate collect -> update, evaluate, checkpoint, write metrics (harness/train/job.py runs it).

Files (see docs/results-format.md): metrics.jsonl (append-only), status.json, checkpoints/ and final/
(harness/train/checkpoint.py). A run found with a checkpoint resumes from it; every random draw depends only on (seed, iteration, purpose),
so a resumed CPU run writes exactly the rows an uninterrupted one would (timing columns aside).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from harness.config import RunConfig, load_run_config
from harness.core import gate, tracking
from harness.core.metrics import MetricsLog, estimate_flops, peak_memory_gb, read_jsonl, write_status
from harness.runtime import dist, models
from harness.runtime.backends import movement_stats
from harness.runtime.evaluate import evaluate
from harness.tasks import grader
from harness.train.build import build
from harness.train.checkpoint import Checkpoints

PHASES = ("generate", "mc_rollouts")
TRACK_SLOW_S = 30.0     # a checkpoint's rows taking longer than this to reach the trackers is a warning row


def charged_devices(device: torch.device) -> int:
    """Devices a run is charged for: on SLURM the job's GPU allocation (what the cluster bills, used or not),
    else the GPUs its processes use; a CPU-only run counts as one device."""
    gpus = int(os.environ.get("SLURM_GPUS_ON_NODE") or 0) if os.environ.get("SLURM_JOB_ID") else 0
    if gpus:
        return gpus * int(os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    return max(1, dist.world()) if device.type == "cuda" else 1   # one GPU per process


class Diverged(Exception):
    """Non-finite loss or gradients: the run stops with its last good checkpoint."""


class Runner:
    def __init__(self, cfg: RunConfig, run_dir: Path, stop=None, stop_after: int | None = None):
        self.cfg, self.dir = cfg, run_dir
        self.stop = stop or (lambda: False)                # polled between iterations (see harness/launch/slurm.py)
        self.stop_after = stop_after                       # iterations after which to stop as at a time limit
        self.run_id = run_dir.name
        b = build(cfg, run_dir)
        self.task, self.tokenizer, self.policy, self.device, self.engine, self.algo = (
            b.task, b.tokenizer, b.policy, b.device, b.engine, b.algo)
        self.n_params = models.num_params(self.policy)
        self.main = dist.is_main()                           # process 0 writes every file
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.ckpt = Checkpoints(run_dir, self.algo, self.policy, self.tokenizer, self.metrics)
        self.trackers, self.track_s = None, 0.0              # (started after the resume: start_trackers)
        self.devices = charged_devices(self.device)
        # Loop state: everything a checkpoint must restore besides the algorithm. device_s is accumulated, not
        # derived, because a requeued job may get a different allocation.
        self.state = {"iteration": 0, "wall_s": 0.0, "eval_s": 0.0, "device_s": 0.0, "tokens_generated": 0,
                      "tokens_prompt": 0, "rows": 0, "saves": 0}

    def resume(self) -> None:
        state = self.ckpt.resume(self.device, self.run_id)
        if state is not None:
            state.setdefault("device_s", state["wall_s"] * self.devices)
            self.state = state
        self.sync_engine()

    def sync_engine(self) -> None:
        """Give the generation engine the policy's current weights (vLLM, or an HF engine's own copy under ZeRO-3:
        an in-memory copy; an HF engine on the training model itself: nothing to do)."""
        with self.ckpt.full_policy() as model:
            self.engine.sync(model)

    def snapshot(self) -> None:
        self.ckpt.snapshot(self.state["iteration"], self.cfg.train.keep_every, self.cfg.train.iterations,
                           self.cfg.algorithm)

    # --- metrics -----------------------------------------------------------------------------------------------
    def compute_columns(self) -> dict:
        c, s = self.algo.counts, self.state
        inference = s["tokens_generated"] + s["tokens_prompt"] + c["forward_tokens"]
        return {"iteration": s["iteration"], "grad_steps": c["grad_steps"], "wall_s": round(s["wall_s"], 3),
                "eval_s": round(s["eval_s"], 3), "tokens_generated": s["tokens_generated"],
                "tokens_trained": c["train_tokens"], "tokens_forward": c["forward_tokens"],
                "flops": estimate_flops(self.n_params, inference, c["train_tokens"]),
                "device_s": round(s["device_s"], 3)}

    def start_eval(self, split: str) -> dict | None:
        """At iteration 0 a run started from another run (init_run) holds that run's final weights: its final
        evaluation on `split`, when made with the same task, engine and evaluation settings, is this run's too (every
        RL run of a sweep would otherwise re-evaluate the same SFT checkpoint)."""
        if self.state["iteration"] or not self.cfg.model.init_run:
            return None
        start = self.dir.parent / self.cfg.model.init_run
        same = ("samples", "temperature", "top_p", "greedy", "max_problems")

        def setting(c):
            return c.eval.model_dump(include=set(same)), c.sampling.max_new_tokens, c.task, c.engine, c.model.dtype
        if setting(load_run_config(start / "config.yaml")) != setting(self.cfg):
            return None
        row = gate.final_eval(start, split)
        keep = ("split", "n_problems", "samples", "temperature", "acc", "pass_at_n", "acc_greedy")
        return row and {**{k: row[k] for k in keep if k in row}, "t_eval": 0.0, "reused_from": start.name}

    def run_eval(self, splits) -> None:
        for split in splits:
            res = self.start_eval(split)
            if res is None:
                res = evaluate(self.engine, self.task, split, self.cfg.eval, self.cfg.sampling.max_new_tokens,
                               seed=self.algo.seed(self.state["iteration"]))
            self.engine.stats.pop()                         # evaluation compute is not training compute
            self.state["eval_s"] += res["t_eval"]
            row = {"kind": "eval", **self.compute_columns(), **res}
            if self.main:
                self.metrics.append(row)
                greedy = f" greedy {res['acc_greedy']:.3f}" if "acc_greedy" in res else ""
                took = (f"(reused: {res['reused_from']}'s final evaluation)" if "reused_from" in res
                        else f"({res['t_eval']:.1f}s)")
                print(f"[{self.run_id}] eval it {self.state['iteration']} {split}: acc {res['acc']:.3f}{greedy} {took}",
                      flush=True)

    # --- trackers (harness/core/tracking.py) --------------------------------------------------------------------
    def start_trackers(self) -> None:
        """After the resume (metrics.jsonl holds what the checkpoint keeps): start the configured trackers on process
        0 and send them the rows they miss."""
        spec = self.cfg.logging.model_dump()
        if not self.main or not any(spec.get(k) for k in tracking.KINDS):
            return
        meta = {"group": spec["group"] or self.dir.parent.name, "name": spec["name"] or self.run_id,
                "run_id": self.run_id, "config": self.cfg.model_dump(mode="json", exclude={"logging"})}
        self.trackers = tracking.Trackers(spec, self.dir, meta, warn=self.warn)
        self.track()

    def track(self) -> None:
        """Send the trackers the rows the last checkpoint made durable (a crash cannot take those back)."""
        if self.trackers:
            took = self.trackers.send(read_jsonl(self.metrics.path)[:self.state["rows"]])
            self.track_s += took
            if took > TRACK_SLOW_S:
                self.warn(f"sending rows to the trackers took {took:.1f}s (> {TRACK_SLOW_S:g}s): a slow tracker "
                          f"server slows the run; t_track in the training rows sums it")

    def save(self, trainers: bool = True) -> None:
        self.ckpt.save(self.state, trainers)
        self.track()

    def warn(self, msg: str, iteration: int | None = None) -> None:
        """A warning row (shown by --status and table.md) and a log line; the run goes on."""
        if self.main:
            it = self.state["iteration"] if iteration is None else iteration
            self.metrics.append({"kind": "warning", "iteration": it, "message": msg})
            print(f"[{self.run_id}] warning: {msg}", flush=True)

    # --- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Train to the end (True), or until `stop()` says the job must end (False; state saved to resume)."""
        try:
            finished = self._run()
        except BaseException:
            if self.trackers:
                self.trackers.close("failed")
            raise
        if self.trackers:
            self.trackers.close("done" if finished else "stopped")
        return finished

    def _run(self) -> bool:
        cfg = self.cfg
        self.resume()
        self.start_trackers()
        n_it, every = cfg.train.iterations, cfg.eval.every
        log_every = max(1, n_it // 20)
        self.snapshot()
        while self.state["iteration"] < n_it:
            it = self.state["iteration"]
            if self.stop() or (self.stop_after is not None and it >= self.stop_after):   # time limit, preemption
                self.save()
                print(f"[{self.run_id}] stopping at iteration {it} (checkpoint saved)", flush=True)
                return False
            if (it == 0 and cfg.eval.at_start) or (it > 0 and every and it % every == 0):
                self.run_eval(cfg.eval.splits)
            t0 = time.perf_counter()
            counts_before = dict(self.algo.counts)
            batch = self.algo.collect(it)
            t1 = time.perf_counter()
            stats = self.algo.update(batch)
            for name, tr in self.algo.trainers.items():    # how far the steps moved each model (Stuck if not at all)
                stats.update(movement_stats(name, tr, cfg, it + 1))
            self.check_health(it + 1, stats)
            t2 = time.perf_counter()
            self.sync_engine()
            t3 = time.perf_counter()
            grades = grader.pop_counts()
            if grades["timeouts"] > cfg.train.max_grade_timeouts * grades["graded"]:
                raise grader.GraderError(f"iteration {it + 1}: {grades['timeouts']} of {grades['graded']} math-verify "
                                         f"gradings timed out (> train.max_grade_timeouts "
                                         f"{cfg.train.max_grade_timeouts:g}): the rewards are not trustworthy")
            self._sum_counts_over_processes(counts_before)
            eng = self.engine.stats.pop()
            gen_s = {p: eng.seconds.get(p, 0.0) for p in PHASES}
            self.state["iteration"] = it + 1
            self.state["wall_s"] += t3 - t0
            self.state["device_s"] += (t3 - t0) * self.devices
            self.state["tokens_generated"] += sum(eng.new_tokens.values())
            self.state["tokens_prompt"] += sum(eng.prompt_tokens.values())
            row = {"kind": "train", **self.compute_columns(),
                   **{f"t_{p}": round(v, 4) for p, v in gen_s.items()},
                   "t_collect_other": round(t1 - t0 - sum(gen_s.values()), 4), "t_train": round(t2 - t1, 4),
                   "t_sync": round(t3 - t2, 4), "grade_timeouts": grades["timeouts"], **peak_memory_gb(),
                   **({"t_track": round(self.track_s, 4)} if self.trackers else {}),
                   **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()}}
            if self.main:
                self.metrics.append(row)
            self.snapshot()
            if self.main and ((it + 1) % log_every == 0 or it == 0):
                print(f"[{self.run_id}] it {it + 1}/{n_it} " + " ".join(
                    f"{k} {row[k]:.3g}" for k in ("train_reward", "loss", "kl", "value_loss") if k in row) +
                    f" | gen {gen_s['generate']:.1f}s mc {gen_s['mc_rollouts']:.1f}s train {t2 - t1:.1f}s"
                    f" | wall {self.state['wall_s']:.0f}s", flush=True)
            if (it + 1) % cfg.train.checkpoint_every == 0 or it + 1 == n_it:
                self.save()
                if self.main:
                    write_status(self.dir, "running", iteration=it + 1, total=n_it)
        if not self._final_eval_done():
            self.run_eval(cfg.eval.final_splits)
            self.save(trainers=False)
        self.ckpt.save_final()
        return True

    def check_health(self, it: int, stats: dict) -> None:
        """A non-finite loss or gradient norm ends the run before anything of this iteration is saved (the last
        checkpoint stays good); a KL to the reference above train.warn_kl is a warning row, shown by --status and
        table.md."""
        bad = [f"{k}={v}" for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise Diverged(f"iteration {it}: non-finite {', '.join(bad)}; stopped before saving anything of it (the "
                           f"last checkpoint is intact: lower the lr, or resume after fixing the cause)")
        t = self.cfg.train
        for key, what, lim in (("kl", "KL to the reference", t.warn_kl), ("grad_norm", "gradient norm", t.warn_grad_norm)):
            v = stats.get(key)
            if lim is not None and v is not None and v > lim:
                self.warn(f"iteration {it}: {what} {v:.3g} > train.warn_{key} {lim:g} (diverging?)", it)

    def _sum_counts_over_processes(self, before: dict) -> None:
        """Data parallel: each process counted the tokens it pushed through its models; the run did the sum."""
        if dist.world() == 1:
            return
        keys = [k for k in self.algo.counts if k.endswith("_tokens")]
        delta = dist.all_sum({k: self.algo.counts[k] - before.get(k, 0) for k in keys})
        for k in keys:
            self.algo.counts[k] = before.get(k, 0) + int(delta[k])

    def _final_eval_done(self) -> bool:
        done = {r["split"] for r in read_jsonl(self.metrics.path)
                if r.get("kind") == "eval" and r["iteration"] == self.cfg.train.iterations}
        return set(self.cfg.eval.final_splits) <= done       # the same file for every process
