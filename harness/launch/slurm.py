"""The SLURM executor: cluster profiles, job arrays with afterok dependencies, checkpoint-and-requeue, job states.

    python -m harness.sweep FILE.yaml --executor slurm --cluster slurm/PROFILE.yaml [--wait]

A profile (slurm/*.yaml) says where jobs go and how a run's `resources:` (GPUs, CPUs, memory, time) become sbatch
flags. Runs with identical flags and the same SFT dependency are submitted as one job array; a run that starts from
another run's final checkpoint waits for that job with `--dependency=afterok`. Every job is a submitit
Checkpointable: on SLURM's USR2 (sent `signal_delay_s` before the time limit, or by `scancel --signal=USR2`) the run
saves a checkpoint at its next iteration boundary and the job requeues itself; a hard requeue or preemption restarts
it from its last periodic checkpoint. Either way the resumed run writes exactly the metrics of an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import submitit
from pydantic import Field

from harness.core import gate
from harness.config import ConfigError, Strict, load_yaml_model
from harness.core.metrics import atomic_write, write_status
from harness.launch.squeue import cancel, queued
from harness.launch.status import fresh_log_dir, run_state


class Profile(Strict):
    """A cluster: partition and billing, what a GPU comes with, limits, and the job's environment set-up."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description="node features, e.g. 'a100|h100'")
    gpus_per_node: int = Field(0, ge=0, description="GPUs on one node: a run asking for more is refused")
    gpu_type: str | None = Field(None, description="asks for --gpus-per-node=TYPE:N, e.g. a100")
    cpus_per_gpu: int = Field(0, ge=0, description="a GPU run gets at least gpus x this many CPUs")
    mem_gb_per_gpu: float = Field(0, ge=0, description="a GPU run gets at least gpus x this much memory")
    max_time_min: int | None = Field(None, ge=1, description="partition time limit; longer runs are requeued at it")
    setup: list[str] = Field([], description="shell lines run before the job (module load, venv activation)")
    python: str | None = Field(None, description="interpreter on the compute nodes (default: the submitting one)")
    array_parallelism: int = Field(64, ge=1, description="tasks of one job array running at once")
    signal_delay_s: int = Field(120, ge=10, description="USR2 this long before the time limit: must exceed one "
                                                        "training iteration plus a checkpoint save")
    max_timeouts: int = Field(20, ge=0, description="requeues at the time limit (preemptions are not counted)")
    sbatch: dict[str, str | int | bool] = Field({}, description="any other sbatch flag, verbatim: {exclude: n01}")
    srun_args: list[str] = []


def load_profile(path: str | Path) -> Profile:
    return load_yaml_model(path, Profile, missing="no such cluster profile (see slurm/ for examples)")


def job_resources(run, p: Profile, where: str = "") -> dict:
    """What one run's job asks for: the run's `resources:` merged with the profile (per-GPU CPUs and memory are
    lower bounds, the partition limit caps the time). Raises ConfigError naming the run, key and value."""
    r = run.cfg.resources
    if r.gpus > p.gpus_per_node:
        raise ConfigError(f"{where}run {run.id}: resources.gpus: {r.gpus} GPUs do not fit on one node of this "
                          f"cluster (gpus_per_node: {p.gpus_per_node})")
    return {"gpus": r.gpus, "cpus": max(r.cpus, r.gpus * p.cpus_per_gpu),
            "mem_gb": max(r.mem_gb, r.gpus * p.mem_gb_per_gpu),
            "time_min": min(r.time_min, p.max_time_min or r.time_min)}


def job_groups(runs, shapes: dict[str, dict]) -> list[list]:
    """Runs in submission order, grouped into arrays: same resources and same dependencies. A group comes after the
    groups holding the runs it depends on (afterok needs their job ids)."""
    pending, placed, out = list(runs), set(), []
    ids = {r.id for r in runs}
    while pending:
        ready = [r for r in pending if all(d in placed or d not in ids for d in r.depends_on)]
        if not ready:
            raise ConfigError(f"dependency cycle among {[r.id for r in pending]}")
        groups: dict[str, list] = {}
        for r in ready:
            groups.setdefault(json.dumps([shapes[r.id], sorted(r.depends_on)], sort_keys=True), []).append(r)
        out += groups.values()
        placed |= {r.id for r in ready}
        pending = [r for r in pending if r.id not in placed]
    return out


def describe(shape: dict) -> str:
    h, m = divmod(shape["time_min"], 60)
    return f"{shape['gpus']} GPU, {shape['cpus']} CPU, {shape['mem_gb']:g} GB, {h}:{m:02d}:00"


class RunJob(submitit.helpers.Checkpointable):
    """What a SLURM job runs: harness.train.job.execute, stopping cleanly when SLURM asks.

    submitit's USR2 handler would checkpoint and requeue at once, wherever the loop is. Instead the signal only raises
    a flag; the run saves a checkpoint at its next iteration boundary and returns, and then submitit's handler does its
    part: `checkpoint()` (inherited: resubmit this same call, which resumes from that checkpoint), requeue, exit."""

    def __init__(self, gates: list[tuple[str, dict]] = ()):
        self.gates = list(gates)        # (dependent's run dir, the gate it requires of this run)

    def __call__(self, run_dir: str, threads: int) -> str:
        from harness.train.job import execute   # lazy: torch + transformers only inside the job, not at submission
        sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        requeue = signal.getsignal(sig)
        asked: list[int] = []
        signal.signal(sig, lambda signum, frame: asked.append(signum))
        state = execute(run_dir, threads, stop=lambda: bool(asked))
        if state == "stopped" and callable(requeue):
            requeue(sig, None)                                  # exits the process
        if state == "done":
            self.check_gates(Path(run_dir))
        return state

    def check_gates(self, run_dir: Path) -> None:
        """A start short of its dependents' gate fails its job, so SLURM cancels the afterok dependents before they
        start (kill_on_invalid_dep); they are marked blocked with the reason."""
        fails = [(dep, why) for dep, g in self.gates if (why := gate.check(run_dir, g))]
        for dep, why in fails:
            write_status(Path(dep), "blocked", error=why)
        if fails:
            raise gate.GateError(fails[0][1])


# --- submission --------------------------------------------------------------------------------------------------
def submit(runs, out: Path, p: Profile, shapes: dict, live: dict[str, str], name: str, log=print) -> dict[str, str]:
    """Submit `runs` (not done, not queued). `live` maps runs already in the queue to their job ids (dependencies).
    Returns {run id: job id}. If SLURM refuses a job, those submitted by this call are cancelled."""
    ex = submitit.SlurmExecutor(folder=fresh_log_dir(out) / "%j", max_num_timeout=p.max_timeouts, python=p.python)
    base = {k: v for k, v in {"partition": p.partition, "account": p.account, "qos": p.qos,
                              "constraint": p.constraint}.items() if v}
    jobs: dict[str, str] = dict(live)
    mine: list[str] = []
    touched: list[str] = []
    try:
        for group in job_groups(runs, shapes):
            shape = shapes[group[0].id]
            deps = sorted({jobs[d] for r in group for d in r.depends_on if d in jobs})
            gpus = shape["gpus"] and (f"{p.gpu_type}:{shape['gpus']}" if p.gpu_type else shape["gpus"])
            extra = {"requeue": True, **({"kill_on_invalid_dep": "yes"} if deps else {}), **p.sbatch}
            ex.update_parameters(**base, job_name=name, time=shape["time_min"], cpus_per_task=shape["cpus"],
                                 mem=f"{int(shape['mem_gb'] * 1024)}M", gpus_per_node=gpus or None,
                                 setup=p.setup, srun_args=p.srun_args, array_parallelism=p.array_parallelism,
                                 signal_delay_s=p.signal_delay_s, dependency=f"afterok:{':'.join(deps)}" if deps
                                 else None, additional_parameters=extra)
            for r in group:                                     # before sbatch: the job may start at once
                write_status(out / r.id, "queued", executor="slurm", error=None)
                touched.append(r.id)
            with ex.batch():
                subs = [ex.submit(RunJob(gates_of(r, runs, out)), str((out / r.id).resolve()), shape["cpus"])
                        for r in group]
            for r, job in zip(group, subs):
                jobs[r.id] = str(job.job_id)
                mine.append(jobs[r.id])
                atomic_write(out / r.id / "job.json", json.dumps(
                    {"executor": "slurm", "job_id": jobs[r.id], "log": str(job.paths.stdout),
                     "stderr": str(job.paths.stderr), "resources": shape, "depends_on": deps,
                     "submitted": time.time()}, indent=1))
            array = f"array {subs[0].job_id.split('_')[0]} of {len(group)}" if len(group) > 1 else f"job {mine[-1]}"
            after = f", after {' '.join(deps)}" if deps else ""
            log(f"[sweep] submitted {array} ({describe(shape)}{after}): {', '.join(r.id for r in group)}")
    except Exception as e:
        cancel(mine)
        for rid in touched:
            write_status(out / rid, "failed", error=f"submission failed: {e}")
        raise RuntimeError(f"SLURM refused a job ({e}); cancelled the {len(mine)} jobs this call had submitted")
    return {r.id: jobs[r.id] for r in runs}


def gates_of(run, runs, out: Path) -> list[tuple[str, dict]]:
    """The gates that the runs starting from `run` require of it, with their run dirs."""
    return [(str((out / r.id).resolve()), r.cfg.model.init_require.model_dump()) for r in runs
            if r.depends_on == [run.id] and r.cfg.model.init_require is not None]


def wait(jobs: dict[str, str], out: Path, poll_s: float = 3.0, log=print) -> None:
    """Block until none of `jobs` ({run id: job id}) is in the queue; report each run as it finishes."""
    left, t0 = dict(jobs), time.time()
    while left:
        time.sleep(poll_s)
        q = queued(left.values())
        for rid in [r for r, j in left.items() if j not in q]:
            del left[rid]
            state = run_state(out / rid)
            log(f"[sweep] {state['state']:<8} {rid} (job {jobs[rid]}; {len(jobs) - len(left)}/{len(jobs)}, "
                f"{time.time() - t0:.0f}s)" + ("" if state["state"] == "done" else f"\n         log: {state['log']}"))
