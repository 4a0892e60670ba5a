"""Executors: run a sweep's pending runs, respecting dependencies (RL runs wait for their SFT run).

`local` trains them in `workers` long-lived processes (harness/launch/workers.py), one run at a time each, with
cores // workers torch threads each (oversubscribing the cores halves throughput); `debug` runs them one by one in
this process through submitit's DebugExecutor (pdb-friendly). `slurm` submits them to a cluster through submitit:
harness/launch/slurm.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import submitit
import yaml

from harness.core import gate
from harness.core.metrics import atomic_write, lock_holder, read_json, write_status
from harness.launch import workers as worker_pool
from harness.launch.status import fresh_log_dir, live_line
from harness.train.job import execute


GRACE_S = 120          # how long a stopped sweep waits for its runs to reach an iteration boundary


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def run_all(runs, out: Path, executor: str = "local", workers: int = 1, log=print) -> dict[str, str]:
    """Execute `runs` (harness.config.Run, in dependency order). Returns {run id: final state}."""
    workers = 1 if executor == "debug" else workers
    threads = _threads(workers)
    log_dir = fresh_log_dir(out).resolve()
    if executor == "local":
        pool = worker_pool.Pool(min(workers, len(runs)), threads, log_dir)
    else:
        pool, ex = None, submitit.AutoExecutor(folder=log_dir / "%j", cluster=executor)
    ids = {r.id for r in runs}
    pending = list(runs)
    running: dict[str, tuple] = {}
    states: dict[str, str] = {}
    total, t_start = len(runs), time.time()
    watch = Watch(log, workers)
    say = watch.say
    try:
        while pending or running:
            for r in list(pending):                          # start whatever is ready, up to `workers`
                if len(running) >= workers:
                    break
                deps = [d for d in r.depends_on if d in ids]
                bad = [d for d in deps if states.get(d) in ("failed", "blocked", "busy")]
                if bad:
                    pending.remove(r)
                    states[r.id] = "blocked"
                    say(f"[sweep] blocked  {r.id}: the run it starts from is {states[bad[0]]} ({bad[0]})")
                    continue
                if any(states.get(d) != "done" for d in deps):
                    continue
                why = gate.start_short(r, out)
                if why:                                      # the start is done but short of what this run needs
                    pending.remove(r)
                    states[r.id] = "blocked"
                    write_status(out / r.id, "blocked", error=why)
                    say(f"[sweep] blocked  {r.id}: {why}")
                    continue
                pending.remove(r)
                run_dir = out / r.id
                holder = lock_holder(run_dir)
                if holder:                                   # another sweep or executor trains it: hands off
                    states[r.id] = "busy"
                    say(f"[sweep] busy     {r.id}: being trained by {holder}; left alone")
                    continue
                write_status(run_dir, "queued", executor=executor)
                job = pool.submit(str(run_dir), r.id) if pool else ex.submit(execute, str(run_dir), threads)
                atomic_write(run_dir / "job.json", json.dumps(
                    {"job_id": str(job.job_id), "executor": executor, "log": str(job.paths.stdout),
                     "stderr": str(job.paths.stderr), "submitted": time.time()}, indent=1))
                running[r.id] = (job, time.time())
                say(f"[sweep] started  {r.id} ({executor} job {job.job_id}, {r.cfg.threads or threads} threads)")
                if executor == "debug":
                    _wait(job)
            for rid, (job, t0) in list(running.items()):
                if not job.done():
                    continue
                del running[rid]
                err = _wait(job)
                state = read_json(out / rid / "status.json", {}).get("state")
                if err is not None and "already being trained by" in err:    # lost the race for the run's lock
                    state = "busy"
                elif err is not None or state != "done":
                    state = "failed"
                    error = read_json(out / rid / "status.json", {}).get("error") or err
                    write_status(out / rid, "failed", error=error)
                states[rid] = state
                where = "" if state == "done" else f"\n         log: {job.paths.stdout}"
                say(f"[sweep] {state:<8} {rid} ({time.time() - t0:.0f}s; {len(states)}/{total}, "
                    f"{time.time() - t_start:.0f}s elapsed){where}")
            watch.show(running, pending, out, states, total)
            if running:
                time.sleep(0.5)
    except KeyboardInterrupt:                   # Ctrl-C, SIGTERM, SIGHUP (harness.launch.sweep): stop every run cleanly
        stop_running(running, out, say)
        raise
    finally:
        if pool:
            pool.close()
    return states


class Watch:
    """Live progress of a local sweep: one line per running run and an overall ETA, redrawn in place on a terminal
    (every 2 s) and printed as plain lines to a log or pipe (every 60 s, HARNESS_LIVE_EVERY), so a long sweep is
    never silent."""

    def __init__(self, log, workers: int):
        self.log, self.workers, self.tty = log, workers, log is print and sys.stdout.isatty()
        self.last, self.drawn = 0.0, 0
        self.took: dict[tuple, float] = {}      # (group, algorithm) -> a run's whole training time, as estimated

    def show(self, running: dict, pending: list, out: Path, states: dict, total: int) -> None:
        now = time.time()
        every = 2 if self.tty else float(os.environ.get("HARNESS_LIVE_EVERY", 60))
        if not running or now - self.last < every:
            return
        self.last = now
        lines, left = [], []
        for rid, (_, t0) in running.items():
            kind, iterations = self._kind(out / rid)
            text, secs, whole = live_line(out / rid, iterations, now - t0)
            lines.append(f"[sweep]   {rid}: {text}")
            if secs is not None:
                left.append(secs)
                self.took[kind] = whole
        # A waiting run is guessed at the time a run of its group and algorithm took (or is taking) in all; runs of a
        # kind not seen yet have no estimate, and the ETA says so rather than guess.
        guesses = [self.took.get((r.cfg.group, r.cfg.algorithm)) for r in pending]
        eta = ""
        if left:
            known = [g for g in guesses if g is not None]
            eta = f", ETA ~{(max(left) + sum(known) / self.workers) / 60:.1f} min"
            if len(known) < len(guesses):
                eta += f" + {len(guesses) - len(known)} waiting run(s) not estimated yet"
        lines.append(f"[sweep] {len(states)}/{total} finished, {len(running)} running, {len(pending)} waiting{eta}")
        if self.tty:
            up = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""     # back over the last block, clear below
            sys.stdout.write(up + "\n".join(lines) + "\n")
            sys.stdout.flush()
            self.drawn = len(lines)
        else:
            for line in lines:
                self.log(line)

    def say(self, msg: str) -> None:
        """An event line (started, done, ...): printed above the live block, which is redrawn below it."""
        if self.tty and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn, self.last = 0, 0.0
        self.log(msg)

    @staticmethod
    def _kind(run_dir: Path) -> tuple[tuple, int]:
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            return (cfg.get("group"), cfg.get("algorithm")), int(cfg["train"]["iterations"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            return (None, None), 0


def stop_running(running: dict, out: Path, log) -> None:
    """Ask every running run to stop at its next iteration boundary (it checkpoints and ends "stopped"), wait up to
    GRACE_S (a second Ctrl-C: stop now), then kill what is left: no run keeps training after the sweep has gone.
    The runs are signalled directly (SIGTERM to the pid in their status.json): SIGINT is ignored altogether when the
    sweep was started in the background (`cmd &` starts with SIGINT ignored, and so do its children)."""
    log(f"[sweep] stopping {len(running)} running run(s) at their next iteration boundary (up to {GRACE_S} s; "
        f"Ctrl-C again to stop them at once)")
    pids = {rid: _run_pid(out / rid) for rid in running}

    def signal_runs(sig):
        for rid, (job, _) in running.items():
            if pids[rid] and not job.done():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pids[rid], sig)
    signal_runs(signal.SIGTERM)                          # workers.local_run's stop flag
    deadline = time.time() + GRACE_S
    try:
        while time.time() < deadline and not all(job.done() for job, _ in running.values()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    if not all(job.done() for job, _ in running.values()):
        time.sleep(max(0.0, 2.1 - (time.time() - (deadline - GRACE_S))))    # past local_run's 2 s debounce
        signal_runs(signal.SIGTERM)                      # a second signal: KeyboardInterrupt inside the run
        time.sleep(2)
    signal_runs(signal.SIGKILL)
    for rid, (job, _) in running.items():
        if read_json(out / rid / "status.json", {}).get("state") not in ("stopped", "done"):
            write_status(out / rid, "stopped", error="interrupted mid-iteration; resumes from its last checkpoint")
    log(f"[sweep] stopped; submit the sweep again to resume the runs from their last checkpoint")


def _run_pid(run_dir: Path) -> int | None:
    """The pid of the process training the run, when it runs on this host (status.json says)."""
    st = read_json(run_dir / "status.json", {}) or {}
    return st.get("pid") if st.get("host") == socket.gethostname() else None


def _wait(job) -> str | None:
    """The job's error line, or None if it succeeded."""
    try:
        job.result()
        return None
    except Exception as e:  # noqa: BLE001 - any failure of a run is reported, not raised
        return (str(e).strip().splitlines() or [type(e).__name__])[-1]
