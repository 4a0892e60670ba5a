"""Expand a sweep YAML into runs, validate all of them, skip finished ones, execute the rest.

    python -m harness.sweep experiments/tiny.yaml                 # run locally (workers from the YAML)
    python -m harness.sweep experiments/tiny.yaml --dry-run       # print run ids + resolved configs, write nothing
    python -m harness.sweep experiments/tiny.yaml --only 'rl-ppo-*'

Every run of the grid is validated before anything is written or submitted; a mistake is reported with the file,
group, key and value, and the exit status is 2. Runs whose status.json says "done" are skipped, so re-running a
finished sweep does nothing; an interrupted run resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import time
from pathlib import Path

from harness.config import ConfigError, dump_yaml, load_sweep, output_dir
from harness.metrics import atomic_write, read_json


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML (see experiments/)")
    p.add_argument("--executor", choices=["local", "debug"], default="local",
                   help="local: subprocesses, --workers at a time; debug: one by one in this process")
    p.add_argument("--workers", type=int, default=None, help="concurrent local runs (default: the YAML's workers)")
    p.add_argument("--dry-run", action="store_true", help="print each run's id and resolved config, then exit")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="only runs whose id matches this glob (repeatable); their SFT dependency is included")
    p.add_argument("--output", default=None, help="results directory (default: the YAML's output_dir or "
                                                  "results/<name>)")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        sweep, runs = load_sweep(a.sweep)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.output) if a.output else output_dir(sweep)
    runs = select(runs, a.only)
    if not runs:
        print(f"error: --only {a.only} matches no run of {a.sweep}", file=sys.stderr)
        return 2
    state = {r.id: read_json(out / r.id / "status.json", {}).get("state", "new") for r in runs}
    if a.dry_run:
        for r in runs:
            deps = f"  (starts from {', '.join(r.depends_on)})" if r.depends_on else ""
            print(f"--- {r.id}  [{state[r.id]}]{deps}\n{dump_yaml(r.cfg)}")
        print(f"{len(runs)} runs in {out} ({sum(s == 'done' for s in state.values())} done); dry run, nothing written")
        return 0
    todo = [r for r in runs if state[r.id] != "done"]
    if not todo:
        print(f"all {len(runs)} runs of {a.sweep} are done in {out}; nothing to do ({time.time() - t0:.1f}s)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.sweep, out / "sweep.yaml")
    for r in todo:
        atomic_write(out / r.id / "config.yaml", dump_yaml(r.cfg))
    print(f"{len(todo)} of {len(runs)} runs to do in {out} ({len(runs) - len(todo)} already done)")
    from harness.launch import run_all
    states = run_all(todo, out, a.executor, a.workers or sweep.workers)
    bad = {k: v for k, v in states.items() if v != "done"}
    print(f"sweep finished in {time.time() - t0:.0f}s: {len(states) - len(bad)} done, {len(bad)} not done")
    for rid, st in bad.items():
        info = read_json(out / rid / "status.json", {})
        job = read_json(out / rid / "job.json", {})
        print(f"  {st}: {rid}: {info.get('error') or ''}\n     log: {job.get('log', '-')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
