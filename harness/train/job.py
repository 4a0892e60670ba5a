"""Executing one run: `execute(run_dir)` is what every executor calls (local workers, SLURM jobs, the CLI).

    python -m harness.run RUN_DIR [--threads N] [--stop-after N]

It takes the run's lock, keeps status.json true (running, done, stopped, failed, blocked), and with
`backend.processes: N` > 1 relaunches `python -m harness.run` under torchrun with N processes (one per GPU), which
run the same loop on the same batches (harness/runtime/dist.py); process 0 writes every file.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from harness.config import RunConfig, load_run_config
from harness.core import gate
from harness.core.metrics import read_json, run_done, run_lock, write_status
from harness.runtime import dist
from harness.train.loop import Runner


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
    root = str(Path(__file__).resolve().parents[2])
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
    p.add_argument("run_dir", help="a run directory holding config.yaml (made by harness.launch.sweep)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N iterations as at a time "
                   "limit: checkpoint saved, state stopped, a later call resumes (used by --rehearse)")
    a = p.parse_args(argv)
    execute(a.run_dir, a.threads, stop_after=a.stop_after)
    return 0
