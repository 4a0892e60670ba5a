"""The local executor's processes: `workers` long-lived processes, each training runs one after another.

A fresh process per run cost ~4 s on a 2-core CPU (~2.7 s to import torch and transformers, ~1.5 s to tear down
and hand over): ~10% of a tiny run, ~40 s of the tiny sweep. A worker pays the imports once. Each run still writes
its own log (stdout and stderr, C-level output and subprocesses included), gets its own pid in status.json for
signals, and starts from a clean slate as far as the run depends on process state: the debug executor already
trains every run in one process (seeds are set per run, dist.init is idempotent, threads are set per run).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

from harness.train.job import execute        # the heavy imports (torch, transformers): once per worker


def local_run(run_dir: str, threads: int) -> str:
    """What a worker runs for each run: harness.train.job.execute, ending at the next iteration boundary with a
    checkpoint ("stopped") when the sweep passes on a Ctrl-C/SIGTERM (SIGINT, SIGTERM); a second signal interrupts at once.
    A terminal's Ctrl-C reaches the run directly and through the sweep: signals within 2 s count as one."""
    asked: list[float] = []

    def handler(signum, frame):
        if asked and time.time() - asked[0] > 2:
            raise KeyboardInterrupt
        asked.append(time.time())

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return execute(run_dir, threads, stop=lambda: bool(asked))
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _serve(conn, threads: int) -> None:
    """A worker's loop: (run_dir, log) in, ("ok", state) or ("error", message) out; None or a closed pipe ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # idle, a terminal's Ctrl-C is the sweep's to handle
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):                  # the sweep has gone
            return
        if msg is None:
            return
        run_dir, log = msg
        os.environ["HARNESS_LOG"] = log
        with _output_to(log):
            try:
                reply = ("ok", local_run(run_dir, threads))
            except BaseException as e:  # noqa: BLE001 - reported to the sweep; the worker serves the next run
                traceback.print_exc()
                reply = ("error", traceback.format_exception_only(type(e), e)[-1].strip() or type(e).__name__)
        conn.send(reply)


@contextlib.contextmanager
def _output_to(path: str):
    """File descriptors 1 and 2 appended to `path` (what the process and anything it starts writes)."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


class Job:
    """One run handed to a worker; what the sweep loop asks of a submitit job (done, result, job_id, paths)."""

    def __init__(self, worker: "Worker", log: Path, n: int):
        self.worker, self.reply = worker, None
        self.job_id = f"{worker.proc.pid}.{n}"
        self.paths = SimpleNamespace(stdout=log, stderr=log)

    def done(self) -> bool:
        if self.reply is None:
            w = self.worker
            try:
                self.reply = w.conn.recv() if w.conn.poll() else None
            except (EOFError, OSError):                  # the worker died: its end of the pipe closed
                w.proc.join(timeout=5)
            if self.reply is None and not w.proc.is_alive():
                w.proc.join()
                self.reply = ("error", f"local worker pid {w.proc.pid} died mid-run (exit code {w.proc.exitcode}; "
                                       f"see {self.paths.stdout})")
            if self.reply is not None:
                w.job = None
        return self.reply is not None

    def result(self) -> str:
        while not self.done():
            self.worker.conn.poll(0.2)
        kind, value = self.reply
        if kind == "error":
            raise RuntimeError(value)
        return value


class Worker:
    def __init__(self, ctx, threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, threads), name="harness-worker")
        self.proc.start()
        child.close()
        self.job: Job | None = None
        self.served = 0


class Pool:
    """`n` workers started at once (their imports overlap the first run's); a dead worker is replaced."""

    def __init__(self, n: int, threads: int, log_dir: Path):
        self.ctx = mp.get_context("spawn")             # a fresh interpreter: no state forked from the sweep
        self.threads, self.log_dir = threads, log_dir
        self.workers = [Worker(self.ctx, threads) for _ in range(n)]

    def submit(self, run_dir: str, run_id: str) -> Job:
        i = next(i for i, w in enumerate(self.workers) if w.job is None)
        if not self.workers[i].proc.is_alive():
            self.workers[i] = Worker(self.ctx, self.threads)
        w = self.workers[i]
        w.served += 1
        w.job = Job(w, self.log_dir / f"{run_id}.log", w.served)
        w.conn.send((run_dir, str(w.job.paths.stdout)))
        return w.job

    def close(self) -> None:
        """Idle workers exit; one still training (a stopped sweep's last resort) is killed."""
        for w in self.workers:
            if w.job is None:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(None)
        for w in self.workers:
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
