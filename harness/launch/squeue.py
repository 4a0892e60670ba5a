"""Asking SLURM about jobs: is a controller up, which jobs are queued, how finished ones ended (sacct), cancel.
Plain subprocess calls, used by the SLURM executor (harness/launch/slurm.py) and by --status."""
from __future__ import annotations

import getpass
import shutil
import subprocess


def _cmd(*args: str, timeout: float = 60) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"{' '.join(args)}: {e}") from None
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def check_cluster() -> str | None:
    """None if a SLURM controller answers, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (not a SLURM login node?)"
    try:
        out = _cmd("scontrol", "ping", timeout=20)
    except RuntimeError as e:
        return str(e)
    return None if "UP" in out else f"scontrol ping: {out.strip()}"


def queued(job_ids) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} for those of `job_ids` still in the queue (pending, running, requeued...)."""
    want = {str(j) for j in job_ids if j}
    if not want:
        return {}
    out = _cmd("squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r")
    rows = (line.split("|") for line in out.splitlines() if line.count("|") == 2)
    return {i: (st, reason) for i, st, reason in rows if i in want}


def _tasks(jid: str) -> list[str]:
    """sacct's name(s) for array tasks: "7_3" -> ["7_3"]; tasks that never started are one record, "7_[0-2,5%2]"."""
    if not jid.endswith("]"):
        return [jid]
    base, spec = jid[:-1].split("_[")
    out = []
    for part in spec.split("%")[0].split(","):
        a, _, b = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(a), int(b or a) + 1)]
    return out


def accounted(job_ids) -> dict[str, tuple[str, str]]:
    """{job id: (state, exit code)} from sacct (finished jobs); {} where accounting is unavailable."""
    want = {str(j) for j in job_ids if j}
    if not want:
        return {}
    try:                                                        # array ids too: unstarted tasks are listed there
        ask = sorted(want | {j.split("_")[0] for j in want})
        out = _cmd("sacct", "-n", "-P", "-X", "-j", ",".join(ask), "-o", "JobID,State,ExitCode")
    except RuntimeError:
        return {}
    res = {}
    for line in out.splitlines():                               # the last record of a requeued job wins
        jid, st, code = (line.split("|") + ["", ""])[:3]
        for task in _tasks(jid):
            if task in want:
                res[task] = (st.split()[0] if st else "UNKNOWN", code)
    return res


def cancel(job_ids) -> None:
    if job_ids:
        _cmd("scancel", *map(str, job_ids))
