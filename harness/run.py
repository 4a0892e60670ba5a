"""One run: build everything from RUN_DIR/config.yaml, iterate collect -> update, evaluate, checkpoint, write metrics.

    python -m harness.run RUN_DIR        (what the sweep's executors call, through `execute`)

Files (see results/README.md): config.yaml (written by the sweep), metrics.jsonl (append-only), status.json,
checkpoints/latest.pt (loop state + metrics row count + which checkpoints/<tag>/ holds the trainers' models,
optimizers and schedules), final/ (HF save_pretrained), and with `train.keep_every: N` weight snapshots
checkpoints/iter_XXXXXX.pt for harness.analyze. A run found with a checkpoint resumes from it; every random draw
depends only on (seed, iteration, purpose), so a resumed CPU run writes exactly the rows an uninterrupted one would
(timing columns aside).

`backend.processes: N` > 1: `execute` relaunches this module under torchrun with N processes (one per GPU); they
run the same loop on the same batches (harness/dist.py) and process 0 writes every file.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import algorithms
from harness import dist, engines, gate, models, tasks
from harness.tasks import grader
from harness.backends import movement_stats
from harness.config import RunConfig, load_run_config
from harness.evaluate import evaluate
from harness.metrics import (MetricsLog, estimate_flops, peak_memory_gb, read_json, run_done, run_lock, safe_load,
                             write_status)

PHASES = ("generate", "mc_rollouts")


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
        self.stop = stop or (lambda: False)                # polled between iterations (see harness/slurm.py)
        self.stop_after = stop_after                       # iterations after which to stop as at a time limit
        self.run_id = run_dir.name
        self.task = tasks.get(cfg.task["name"])(tasks.get(cfg.task["name"]).Config(**cfg.task))
        mcfg = cfg.model
        if mcfg.init_run:
            start = run_dir.parent / mcfg.init_run / "final"
            if not (start / "config.json").exists():
                raise FileNotFoundError(f"{run_dir}: model.init_run {mcfg.init_run!r} has no final checkpoint at "
                                        f"{start} (did that run finish?)")
            why = gate.check(start.parent, mcfg.init_require and mcfg.init_require.model_dump())
            if why:
                raise gate.GateError(why)
            mcfg = mcfg.model_copy(update={"init_run": None, "init_require": None, "path": str(start)})
        torch.manual_seed(cfg.seed)
        self.tokenizer, self.policy = models.load(mcfg, seed=cfg.seed)
        self.device = dist.device()
        self.policy.to(self.device)
        self.n_params = models.num_params(self.policy)
        self.engine = engines.build(cfg, self.policy, self.tokenizer)
        self.algo = algorithms.get(cfg.algorithm)(cfg, self.policy, self.tokenizer, self.engine, self.task)
        self.main = dist.is_main()                           # process 0 writes every file
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.devices = charged_devices(self.device)
        # Loop state: everything a checkpoint must restore besides the algorithm. device_s is accumulated, not
        # derived, because a requeued job may get a different allocation.
        self.state = {"iteration": 0, "wall_s": 0.0, "eval_s": 0.0, "device_s": 0.0, "tokens_generated": 0,
                      "tokens_prompt": 0, "rows": 0, "saves": 0}

    # --- checkpoints -------------------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.dir / "checkpoints" / "latest.pt"

    def save_checkpoint(self, trainers: bool = True) -> None:
        """Trainers (every process: DeepSpeed writes per-process shards) into a fresh checkpoints/<tag>/, then
        latest.pt, naming that tag, replaced atomically: a crash anywhere leaves the previous checkpoint in force.
        trainers=False (nothing trained since the last save) rewrites latest.pt only."""
        ck = self.ckpt_path.parent
        ck.mkdir(parents=True, exist_ok=True)              # (an algorithm may hold no trainer: RestEM)
        if trainers or "tag" not in self.state:
            self.state["saves"] += 1
            self.state["tag"] = f"save{self.state['saves']}"
            for name, tr in self.algo.trainers.items():
                tr.save(ck / self.state["tag"] / name)
            dist.barrier()
        if self.main:
            self.state["rows"] = self.metrics.rows()
            self.state["rows_sha"] = self.metrics.checksum(self.state["rows"])
            tmp = self.ckpt_path.with_suffix(".tmp")
            torch.save({"algo": self.algo.state_dict(), "loop": dict(self.state)}, tmp)
            os.replace(tmp, self.ckpt_path)
            for old in ck.iterdir():
                if old.is_dir() and old.name != self.state["tag"]:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def maybe_snapshot(self) -> None:
        """`train.keep_every`: keep the weights at iterations 0, N, 2N, ... and the last one (what harness.analyze
        needs to study values *during* training). Weights only: snapshots are for analysis, not for resuming."""
        it, every = self.state["iteration"], self.cfg.train.keep_every
        if not every or (it % every and it != self.cfg.train.iterations):
            return
        path = self.dir / "checkpoints" / f"iter_{it:06d}.pt"
        exists = path.exists()
        dist.barrier()                                      # every process decided before process 0 writes
        if exists:
            return
        snap = {"iteration": it, "algorithm": self.cfg.algorithm}
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

    def maybe_resume(self) -> None:
        if self.ckpt_path.exists():
            ck = safe_load(self.ckpt_path, self.device)
            self.algo.load_state_dict(ck["algo"])
            self.state = ck["loop"]
            self.state.setdefault("device_s", self.state["wall_s"] * self.devices)
            for name, tr in self.algo.trainers.items():
                tr.load(self.ckpt_path.parent / self.state["tag"] / name)
            if self.main:
                self.metrics.truncate(self.state["rows"], self.state.get("rows_sha"))
                print(f"[{self.run_id}] resumed at iteration {self.state['iteration']}", flush=True)
        elif self.main and self.metrics.path.exists():
            self.metrics.truncate(0)                        # started before but never checkpointed: start over
        dist.barrier()                                      # every process reads metrics.jsonl after this
        self.sync_engine()

    def sync_engine(self) -> None:
        """Give the generation engine the policy's current weights (vLLM, or an HF engine's own copy under ZeRO-3:
        an in-memory copy; an HF engine on the training model itself: nothing to do)."""
        with self.full_policy() as model:
            self.engine.sync(model)

    def full_policy(self):
        """The policy with all its weights in place: through its trainer (ZeRO-3 gathers shards), or the module
        itself while the algorithm holds no policy trainer (DPO before its pairs exist, RestEM between iterations)."""
        tr = self.algo.trainers.get("policy")
        return tr.full_model() if tr else contextlib.nullcontext(self.policy)

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

    # --- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Train to the end (True), or until `stop()` says the job must end (False; state saved to resume)."""
        cfg = self.cfg
        self.maybe_resume()
        n_it, every = cfg.train.iterations, cfg.eval.every
        log_every = max(1, n_it // 20)
        self.maybe_snapshot()
        while self.state["iteration"] < n_it:
            it = self.state["iteration"]
            if self.stop() or (self.stop_after is not None and it >= self.stop_after):   # time limit, preemption
                self.save_checkpoint()
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
                   **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()}}
            if self.main:
                self.metrics.append(row)
            self.maybe_snapshot()
            if self.main and ((it + 1) % log_every == 0 or it == 0):
                print(f"[{self.run_id}] it {it + 1}/{n_it} " + " ".join(
                    f"{k} {row[k]:.3g}" for k in ("train_reward", "loss", "kl", "value_loss") if k in row) +
                    f" | gen {gen_s['generate']:.1f}s mc {gen_s['mc_rollouts']:.1f}s train {t2 - t1:.1f}s"
                    f" | wall {self.state['wall_s']:.0f}s", flush=True)
            if (it + 1) % cfg.train.checkpoint_every == 0 or it + 1 == n_it:
                self.save_checkpoint()
                if self.main:
                    write_status(self.dir, "running", iteration=it + 1, total=n_it)
        if not self._final_eval_done():
            self.run_eval(cfg.eval.final_splits)
            self.save_checkpoint(trainers=False)
        self.save_final()
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
            if self.main and lim is not None and v is not None and v > lim:
                msg = f"iteration {it}: {what} {v:.3g} > train.warn_{key} {lim:g} (diverging?)"
                self.metrics.append({"kind": "warning", "iteration": it, "message": msg})
                print(f"[{self.run_id}] warning: {msg}", flush=True)

    def _sum_counts_over_processes(self, before: dict) -> None:
        """Data parallel: each process counted the tokens it pushed through its models; the run did the sum."""
        if dist.world() == 1:
            return
        keys = [k for k in self.algo.counts if k.endswith("_tokens")]
        delta = dist.all_sum({k: self.algo.counts[k] - before.get(k, 0) for k in keys})
        for k in keys:
            self.algo.counts[k] = before.get(k, 0) + int(delta[k])

    def _final_eval_done(self) -> bool:
        from harness.metrics import read_jsonl
        done = {r["split"] for r in read_jsonl(self.metrics.path)
                if r.get("kind") == "eval" and r["iteration"] == self.cfg.train.iterations}
        return set(self.cfg.eval.final_splits) <= done       # the same file for every process

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


def execute(run_dir: str | Path, threads: int | None = None, stop=None, stop_after: int | None = None) -> str:
    """Run (or resume) the run in `run_dir`; the entry point every executor calls. Returns "done", or "stopped" when
    `stop()` (polled between iterations) asked it to end early, or `stop_after` iterations are done (the rehearsal's
    stand-in for a time limit): its checkpoint is then saved for a resume."""
    run_dir = Path(run_dir)
    if run_done(run_dir):                               # (done without final/: resumes to write it again)
        return "done"
    cfg = load_run_config(run_dir / "config.yaml")
    threads = cfg.threads or threads or int(os.environ.get("HARNESS_THREADS", 0)) or os.cpu_count()
    launched = dist.launched_processes()
    if launched not in (1, cfg.backend.processes):
        raise ValueError(f"{run_dir}: launched with {launched} processes but backend.processes is "
                         f"{cfg.backend.processes}")
    if launched > 1:                                    # torchrun's processes run under their launcher's lock
        return _execute(run_dir, cfg, threads, stop, stop_after)
    with run_lock(run_dir):                             # one owner per run: RunBusy if another process trains it
        if run_done(run_dir):                           # finished while we waited to start
            return "done"
        if cfg.backend.processes > 1:
            return launch_processes(run_dir, cfg.backend.processes, threads, stop_after)
        return _execute(run_dir, cfg, threads, stop, stop_after)


def _execute(run_dir: Path, cfg: RunConfig, threads: int, stop, stop_after: int | None = None) -> str:
    dist.init()
    main = dist.is_main()
    torch.set_num_threads(threads)
    log = os.environ.get("HARNESS_LOG", "")
    if main:
        write_status(run_dir, "running", pid=os.getpid(), host=socket.gethostname(), threads=threads,
                     job_id=os.environ.get("SLURM_JOB_ID"), log=log, started=time.time(), error=None,
                     processes=dist.world())
    try:
        finished = Runner(cfg, run_dir, stop, stop_after).run()
    except gate.GateError as e:
        write_status(run_dir, "blocked", error=str(e))
        raise
    except KeyboardInterrupt:
        write_status(run_dir, "stopped", error="interrupted mid-iteration; resumes from its last checkpoint")
        raise
    except BaseException as e:
        msg = (traceback.format_exception_only(type(e), e)[-1].strip() or type(e).__name__)
        write_status(run_dir, "failed", error=f"process {dist.rank()}: {msg}" if dist.world() > 1 else msg)
        raise
    if not finished:
        if main:
            write_status(run_dir, "stopped")
        return "stopped"
    if main:
        write_status(run_dir, "done", finished=time.time())
    return "done"


def launch_processes(run_dir: Path, n: int, threads: int, stop_after: int | None = None) -> str:
    """Run this module under torchrun with n processes on this machine (inside one SLURM job: the job asks for
    n GPUs). Threads are shared out between the processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "harness.run", str(run_dir), "--threads", str(max(1, threads // n))]
    cmd += ["--stop-after", str(stop_after)] if stop_after is not None else []
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)}
    rc = subprocess.run(cmd, env=env).returncode
    state = read_json(run_dir / "status.json", {}).get("state")
    if rc != 0 or state not in ({"done", "stopped"} if stop_after is not None else {"done"}):
        if state != "failed":
            write_status(run_dir, "failed", error=f"torchrun exited with status {rc}")
        raise RuntimeError(f"{run_dir}: torchrun with {n} processes failed (exit status {rc})")
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory holding config.yaml (made by harness.sweep)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N iterations as at a time "
                   "limit: checkpoint saved, state stopped, a later call resumes (used by --rehearse)")
    a = p.parse_args(argv)
    execute(a.run_dir, a.threads, stop_after=a.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
