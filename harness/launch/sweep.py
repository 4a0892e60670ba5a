"""Expand a sweep YAML into runs, validate all of them, skip finished ones, execute the rest.

    python -m harness.sweep experiments/tiny.yaml                 # run locally (workers from the YAML)
    python -m harness.sweep experiments/tiny.yaml --dry-run       # print run ids + resolved configs, write nothing
    python -m harness.sweep experiments/tiny.yaml --only 'rl-ppo-*'
    python -m harness.sweep FILE.yaml --cluster slurm/PROFILE.yaml [--wait]   # submit to SLURM (job arrays)
    python -m harness.sweep FILE.yaml --status                    # one line per run: state, job, progress, log
    python -m harness.sweep FILE.yaml --cancel                    # cancel the sweep's SLURM jobs
    python -m harness.sweep FILE.yaml --rehearse [--stand-in tiny]   # every code path for 2 iterations first

Every run of the grid (and the cluster profile) is validated before anything is written or submitted; a mistake is
reported with the file, group, key and value, and the exit status is 2. Runs whose status.json says "done" are
skipped, so re-running a finished sweep does nothing; an interrupted run resumes from its last checkpoint. On SLURM,
runs whose job is still queued or running are left alone: re-submitting a sweep submits only what is neither.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from harness.config import ConfigError, dump_yaml, load_sweep, output_dir
from harness.core import gate
from harness.core.metrics import atomic_write, read_json, run_done, write_status
from harness.launch import rehearse, slurm, squeue
from harness.launch.status import run_state, status_lines
from harness.reporting.runs import tracker_names


def select(runs, patterns: list[str] | None):
    """Runs matching any pattern (glob on the run id), plus the runs they start from."""
    if not patterns:
        return runs
    by_id = {r.id: r for r in runs}
    keep = {r.id for r in runs if any(fnmatch.fnmatch(r.id, p) for p in patterns)}
    stack = list(keep)
    while stack:
        for d in by_id[stack.pop()].depends_on:
            if d not in keep:
                keep.add(d)
                stack.append(d)
    return [r for r in runs if r.id in keep]


def cancel_sweep(runs, out: Path) -> int:
    jobs = {r.id: read_json(out / r.id / "job.json", {}) for r in runs}
    ids = [j["job_id"] for j in jobs.values() if j.get("executor") == "slurm"]
    live = [i for i in ids if i in squeue.queued(ids)]
    if live:
        squeue.cancel(live)
    local = sum(j.get("executor") in ("local", "debug") for j in jobs.values())
    print(f"cancelled {len(live)} SLURM jobs" + (f": {' '.join(live)}" if live else "") +
          (f"; {local} runs were started by a local sweep process: stop it (Ctrl-C)" if local else ""))
    return 0


def name_trackers(sweep, runs):
    """Each run's tracker group (the sweep) and name (its table.md label and seed), over the whole sweep so that a
    run's name does not depend on --only. Not part of run ids (harness/config.py config_hash)."""
    names = tracker_names({r.id: r.cfg.model_dump(mode="json") for r in runs})
    for r in runs:
        r.cfg = r.cfg.model_copy(update={"logging": r.cfg.logging.model_copy(
            update={"group": sweep.name, "name": names[r.id]})})
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML (see experiments/)")
    p.add_argument("--executor", choices=["local", "debug", "slurm"], default=None,
                   help="local (default): --workers long-lived processes, one run at a time each; debug: one by one in this process; "
                        "slurm: job arrays on a cluster (needs --cluster)")
    p.add_argument("--cluster", metavar="PROFILE", help="SLURM cluster profile, e.g. slurm/example-academic.yaml "
                                                        "(implies --executor slurm)")
    p.add_argument("--wait", action="store_true", help="slurm: stay until the submitted jobs have left the queue "
                                                       "and report how each run ended")
    p.add_argument("--status", action="store_true", help="print one line per run (state, job id, iteration, last "
                                                         "validation accuracy, log) and exit")
    p.add_argument("--cancel", action="store_true", help="cancel the sweep's queued and running SLURM jobs")
    p.add_argument("--workers", type=int, default=None, help="concurrent local runs (default: the YAML's workers)")
    p.add_argument("--dry-run", action="store_true", help="print each run's id and resolved config, then exit")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="only runs whose id matches this glob (repeatable); their SFT dependency is included")
    p.add_argument("--rehearse", action="store_true", help="run every distinct code path of the sweep for two "
                   "iterations with small batches, resuming once, and check it (harness/launch/rehearse.py); writes to "
                   "<output>-rehearsal")
    p.add_argument("--stand-in", choices=["tiny"], default=None, help="--rehearse offline: tiny random stand-ins "
                   "for hub/path/GGUF models, the shipped data subsets for GSM8K/MATH")
    p.add_argument("--output", default=None, help="results directory (default: the YAML's output_dir or "
                                                  "results/<name>)")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        sweep, runs = load_sweep(a.sweep)
        runs = name_trackers(sweep, runs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.output) if a.output else output_dir(sweep)
    every_id = [r.id for r in runs]
    runs = select(runs, a.only)
    if not runs:
        print(f"error: --only {a.only} matches no run of {a.sweep}", file=sys.stderr)
        return 2
    if a.status:
        print("\n".join(status_lines(runs, out)))
        return 0
    if a.cancel:
        return cancel_sweep(runs, out)
    if a.stand_in and not a.rehearse:
        print("error: --stand-in goes with --rehearse", file=sys.stderr)
        return 2
    if a.rehearse:
        return rehearse.main(a.sweep, runs, out, a.stand_in)
    executor = a.executor or ("slurm" if a.cluster else "local")
    if (executor == "slurm") != bool(a.cluster):
        print("error: --cluster PROFILE goes with --executor slurm (and only with it)", file=sys.stderr)
        return 2
    if executor == "slurm":
        try:
            profile = slurm.load_profile(a.cluster)
            shapes = {r.id: slurm.job_resources(r, profile, f"{a.sweep}: ") for r in runs}
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    state = {r.id: read_json(out / r.id / "status.json", {}).get("state", "new") for r in runs}
    for r in runs:
        if state[r.id] == "done" and run_done(out / r.id) is None:
            state[r.id] = "damaged"
            print(f"[sweep] damaged  {r.id}: done, but its final/ weights are gone; regenerated from its last "
                  f"checkpoint")
    if a.dry_run:
        for r in runs:
            deps = f"  (starts from {', '.join(r.depends_on)})" if r.depends_on else ""
            job = f"  [SLURM: {slurm.describe(shapes[r.id])}]" if executor == "slurm" else ""
            print(f"--- {r.id}  [{state[r.id]}]{deps}{job}\n{dump_yaml(r.cfg)}")
        print(f"{len(runs)} runs in {out} ({sum(s == 'done' for s in state.values())} done); dry run, nothing written")
        return 0
    todo, live = [r for r in runs if state[r.id] != "done"], {}
    if executor == "slurm" and todo:
        why = squeue.check_cluster()
        if why:
            print(f"error: no SLURM cluster to submit to: {why}", file=sys.stderr)
            return 2
        jobs = {r.id: read_json(out / r.id / "job.json", {}) for r in todo}
        jobs = {rid: j["job_id"] for rid, j in jobs.items() if j.get("executor") == "slurm"}
        queue = squeue.queued(jobs.values())
        live = {rid: jid for rid, jid in jobs.items() if jid in queue}
        todo = [r for r in todo if r.id not in live]
        for rid, jid in live.items():
            print(f"[sweep] in queue {rid} (job {jid}, {queue[jid][0]}): left alone")
    if not todo and not (live and a.wait):
        print(f"all {len(runs)} runs of {a.sweep} are done in {out}" + (f" or queued ({len(live)})" if live else "")
              + f"; nothing to do ({time.time() - t0:.1f}s)")
        return 0
    blocked = {}
    for r in todo:                         # a start that is already done and short of the bar: its runs never start
        why = r.depends_on and state.get(r.depends_on[0]) == "done" and gate.start_short(r, out)
        if why:
            blocked[r.id] = why
            print(f"[sweep] blocked  {r.id}: {why}")
    todo = [r for r in todo if r.id not in blocked]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.sweep, out / "sweep.yaml")
    atomic_write(out / "runs.json", json.dumps(every_id))   # the sweep's run ids, for readers without the registries
    for rid, why in blocked.items():
        write_status(out / rid, "blocked", error=why)
    if blocked and not todo and not (live and a.wait):
        print(f"{len(blocked)} runs blocked by their start's gate; nothing else to do", file=sys.stderr)
        return 1
    for r in todo:
        atomic_write(out / r.id / "config.yaml", dump_yaml(r.cfg))
    done = sum(s == "done" for s in state.values())
    print(f"{len(todo)} of {len(runs)} runs to do in {out} ({done} already done, {len(live)} queued)")
    if executor == "slurm":
        try:
            jobs = slurm.submit(todo, out, profile, shapes, live, sweep.name) if todo else {}
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if not a.wait:
            follow = f"python -m harness.sweep {a.sweep}" + (f" --output {a.output}" if a.output else "")
            print(f"submitted {len(jobs)} runs; follow them with: {follow} --status")
            return 0
        slurm.wait({**live, **jobs}, out)
        states = {rid: run_state(out / rid)["state"] for rid in {**live, **jobs}}
    else:
        from harness.launch.local import run_all   # lazy: torch + transformers only when runs train here

        def interrupt(signum, frame):                  # SIGTERM / SIGHUP (kill, timeout, a closed terminal) = Ctrl-C
            raise KeyboardInterrupt
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
        try:
            states = run_all(todo, out, executor, a.workers or sweep.workers)
        except KeyboardInterrupt:
            return 130
    states.update(dict.fromkeys(blocked, "blocked"))
    bad = {k: v for k, v in states.items() if v != "done"}
    print(f"sweep finished in {time.time() - t0:.0f}s: {len(states) - len(bad)} done, {len(bad)} not done")
    for rid, st in bad.items():
        s = run_state(out / rid)
        print(f"  {st}: {rid}: {s['error'] or s['detail']}\n     log: {s['log']}")
    return 1 if bad else 0
