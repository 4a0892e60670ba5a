"""Where each run of a sweep stands: status.json (written by the run) reconciled with what SLURM knows of its job.

A run's own status.json cannot say that its job was killed (SIGKILL, out of memory, time limit without requeue,
cancellation), nor that it waits in the queue; SLURM can. A run that is not done and whose job has left the queue is
failed (or cancelled), whatever its status.json last said.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from harness.core.metrics import read_json, read_jsonl, run_done
from harness.launch import squeue

PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}
ERROR_WORDS = ("error", "exception", "killed", "cancelled", "time limit", "oom", "traceback")


def last_error_line(log: str | None) -> str:
    """The last line of a log that looks like an error (the exception of a Python traceback, slurmstepd's notice);
    "" when none does."""
    try:
        lines = [x.strip() for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
    except (OSError, TypeError):
        return ""
    hits = [x for x in lines if any(w in x.lower() for w in ERROR_WORDS)]
    # No error line (a SIGKILL writes none): say nothing rather than quote whatever came last, e.g. the source
    # line of a warning.
    return hits[-1][:300] if hits else ""


def run_state(run_dir: Path, queue: dict | None = None, acct: dict | None = None) -> dict:
    """{state, detail, job_id, log, error}; state is new|queued|pending|running|stopped|done|damaged|failed|cancelled|
    blocked (damaged: says done, but final/ is gone; blocked: its start failed the gate its group requires,
    harness/core/gate.py).
    `queue`/`acct`: harness.launch.squeue.queued()/accounted() results for many runs at once (queried here if None);
    queue=False: SLURM is unreachable, status.json is all there is."""
    job = read_json(run_dir / "job.json", {})
    jid = job.get("job_id") if job.get("executor") == "slurm" and queue is not False else None
    st = read_json(run_dir / "status.json", {})
    state, detail = st.get("state", "new"), ""
    if state == "done":
        bad: list[int] = []
        read_jsonl(run_dir / "metrics.jsonl", bad)
        why = ("final/ weights missing: submit the sweep again to regenerate them" if run_done(run_dir) is None else
               f"metrics.jsonl line {bad[0]} unreadable: restore the file, or delete the run folder to train it "
               f"again" if bad else "")
        if why:
            return {"state": "damaged", "detail": why, "job_id": job.get("job_id"), "log": job.get("log", "-"),
                    "error": ""}
    if state != "done" and jid:
        queue = squeue.queued([jid]) if queue is None else queue
        st = read_json(run_dir / "status.json", {})           # re-read: the job may have finished meanwhile
        state = st.get("state", "new")
        if state == "done":
            pass
        elif jid in queue:
            sl, reason = queue[jid]
            state = "pending" if sl in PENDING else "running" if sl in RUNNING else sl.lower()
            detail = "SLURM: " + sl + (f" ({reason})" if reason not in ("", "None") else "")
        else:                                                   # left the queue without writing "done"
            sl, code = (squeue.accounted([jid]) if acct is None else acct).get(jid, ("", ""))
            state = (state if state in ("failed", "blocked")                 # the run's word first
                     else "cancelled" if sl == "CANCELLED" else "failed")
            detail = f"SLURM: {sl or 'not in the queue'}" + (f", exit code {code}" if code and code != "0:0" else "")
    elif state in ("running", "queued") and st.get("host") == socket.gethostname() and st.get("pid"):
        try:                                                    # a local run whose process is gone died silently
            os.kill(st["pid"], 0)
        except ProcessLookupError:
            state, detail = "failed", "process gone (killed without a word: SIGKILL, out of memory?)"
        except PermissionError:
            pass
    error = ""
    if state in ("failed", "blocked"):
        error = st.get("error") or last_error_line(job.get("stderr")) or last_error_line(job.get("log"))
    return {"state": state, "detail": detail, "job_id": job.get("job_id"), "log": job.get("log", "-"),
            "error": error}


def progress(run_dir: Path) -> tuple[int, float | None, list[str]]:
    """(iterations completed, last validation accuracy, warning messages) from one read of metrics.jsonl."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    acc = [r["acc"] for r in rows if r.get("kind") == "eval" and r.get("split") == "validation"]
    warn = [r["message"] for r in rows if r.get("kind") == "warning"]
    return (rows[-1]["iteration"] if rows else 0), (acc[-1] if acc else None), warn


def live_line(run_dir: Path, total: int, running_s: float) -> tuple[str, float | None, float | None]:
    """One line for a running run (iteration i/N, last training reward and validation accuracy, s/iteration, ETA),
    its remaining and its whole training seconds (None until an iteration has been timed)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r.get("kind") == "train"]
    acc = [r["acc"] for r in rows if r.get("kind") == "eval" and r.get("split") == "validation"]
    it = train[-1]["iteration"] if train else 0
    parts = [f"it {it}/{total}"]
    if train and "train_reward" in train[-1]:
        parts.append(f"reward {train[-1]['train_reward']:.3f}")
    if acc:
        parts.append(f"val {acc[-1]:.3f}")
    left = whole = None
    if len(train) >= 2:
        per_it = (train[-1]["wall_s"] - train[0]["wall_s"]) / (len(train) - 1)
        left, whole = per_it * (total - it), per_it * total
        parts += [f"{per_it:.2f} s/it", f"ETA {left:.0f}s"]
    elif not train:
        parts.append(f"starting ({running_s:.0f}s)")
    return ", ".join(parts), left, whole


def status_lines(runs, out: Path) -> list[str]:
    """One line per run: id, state (SLURM's view in brackets), job id, iteration/total, last validation accuracy,
    log path; a failed run adds its last error line."""
    jobs = [read_json(out / r.id / "job.json", {}) for r in runs]
    ids = [j["job_id"] for j in jobs if j.get("executor") == "slurm"]
    lines, queue, acct = [], {}, {}
    try:
        queue = squeue.queued(ids) if ids else {}
        acct = squeue.accounted([i for i in ids if i not in queue]) if ids else {}
    except RuntimeError as e:
        queue, lines = False, [f"warning: SLURM unreachable ({e}); states are the runs' own last words"]
    width = max(len(r.id) for r in runs)
    lines.append(f"{'run':<{width}}  {'state':<9} {'job':<10} {'iter':>9}  {'val acc':>7}  log")
    counts: dict[str, int] = {}
    states: dict[str, str] = {}
    for r in runs:
        s = run_state(out / r.id, queue, acct)
        states[r.id] = s["state"]
        counts[s["state"]] = counts.get(s["state"], 0) + 1
        bad = [d for d in r.depends_on if states.get(d) in ("failed", "cancelled")]
        if bad and s["state"] in ("failed", "cancelled") and not s["error"]:
            s["error"] = f"never ran: {bad[0]}, which it starts from, did not finish"
        it, acc, warn = progress(out / r.id)
        if warn:
            s["detail"] = "; ".join(x for x in (s["detail"], f"{len(warn)} warning(s), last: {warn[-1]}") if x)
        lines.append(f"{r.id:<{width}}  {s['state']:<9} {s['job_id'] or '-':<10} "
                     f"{f'{it}/{r.cfg.train.iterations}':>9}  {'-' if acc is None else f'{acc:.3f}':>7}  {s['log']}")
        more = [x for x in (s["detail"], s["error"] and f"error: {s['error']}") if x]
        if more:
            lines.append(f"{'':<{width}}  " + "; ".join(more))
    lines.append(f"{len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return lines


def fresh_log_dir(out: Path) -> Path:
    """A new submitit log folder per submission: job ids (pids, SLURM ids on a fresh cluster) repeat, and submitit
    would otherwise read a stale result file left by an earlier job with the same id."""
    base = out / "logs" / time.strftime("%Y%m%d-%H%M%S")
    d, n = base, 1
    while True:
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            n += 1
            d = base.with_name(f"{base.name}-{n}")
