"""Rehearse a sweep before spending GPU hours on it: every distinct code path, two iterations each.

    python -m harness.sweep experiments/table1.yaml --rehearse                   # on a GPU node: the real models
    python -m harness.sweep experiments/table1.yaml --rehearse --stand-in tiny   # offline (CI): tiny stand-ins

Runs that differ only in seed or numeric values (lr, K, beta, ...) take the same code path, so one of them is
rehearsed for all (the output lists what it stands for). A path is everything else: algorithm, engine, backend,
ZeRO stage, one process or several (more than 2 become 2), dtypes, precision, task and its options, and whether
iterations, KL, snapshots, a state cap or a rollout context are set. Each rehearsed run, with small batches
(<= 4 prompts x 4 samples, two minibatches of two micro-batches, K <= 3, evaluation on <= 4 problems):
  1. trains iteration 1 of 2 (collect, update, evaluation) in its own process, with the run's engine, backend,
     dtypes and process count, and stops there as at a time limit (checkpoint saved; `harness.run --stop-after 1`);
     the Stuck check runs after its first step with a gradient;
  2. a new process resumes from that checkpoint as a requeued job does, trains iteration 2, evaluates, saves final/;
  3. is checked: done, one training row per iteration, final evaluation and weights written, the resume taken from
     the checkpoint, a policy that had a gradient to apply moved (`policy_changed` > 0); a policy that never had
     one (no reward signal) is a warning.
Then `harness.plot` draws the rehearsal's results. Printed per run: seconds per iteration, peak memory, and the full
run's training time projected from it (linear in episodes x new tokens per iteration, and in K for VinePPO's
rollouts: a rough guide), with a warning when that exceeds resources.time_min.

`--stand-in tiny` makes the sweep rehearse offline on CPU: each model from a hub, path or GGUF file is replaced by a
random 2-layer Llama in the run's dtype with a byte-level BPE tokenizer (the real models' tokenizers are BPE),
trained for a minute to recite the 10 shortest shipped training solutions (tests/data), half of them with a wrong
final answer, so that rewards vary and every method has something to learn; tasks read those 10 problems; vLLM runs
eager (no graph compilation, which takes minutes on a CPU). Results go to results/<name>-rehearsal, never into the sweep's own results.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.config import RunConfig, dump_yaml
from harness.core.metrics import atomic_write, read_json, read_jsonl
from harness.reporting import plot

REPO = Path(__file__).resolve().parents[2]
# numeric options whose value, not just presence, picks a code path
STRUCTURAL = {"backend.processes": lambda v: min(v, 2), "backend.zero_stage": lambda v: v,
              "train.iterations": lambda v: v > 0, "train.kl_coef": lambda v: v > 0,
              "train.keep_every": lambda v: v > 0, "eval.every": lambda v: v > 0}
IGNORED = ("seed", "label", "group", "threads", "progress", "resources", "task.data_dir", "model.hub", "model.path",
           "model.revision", "model.gguf_file", "model.gguf_package", "model.init_run", "model.init_require",
           "logging.group", "logging.name")
SMALL = {"prompts": 4, "samples": 4, "K": 3, "eval_problems": 4, "eval_samples": 2, "new_tokens": 128,
         "stand_in_rows": 10}


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def path_key(cfg: RunConfig) -> tuple:
    m = cfg.model
    out = [("model.source", "run" if m.init_run else "gguf" if (m.gguf_file or m.gguf_package) else m.init)]
    for k, v in _flat(cfg.model_dump()):
        if k in IGNORED or k.split(".")[0] in IGNORED:
            continue
        if k in STRUCTURAL:
            v = STRUCTURAL[k](v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = "#"
        elif isinstance(v, list):
            v = tuple(v)
        out.append((k, v))
    return tuple(out)


def plan(runs) -> list[tuple[object, list[str]]]:
    """(run to rehearse, ids of the runs it stands for), in sweep order; a rehearsed run's start is rehearsed too."""
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(path_key(r.cfg), []).append(r)
    chosen = {g[0].id: [x.id for x in g] for g in groups.values()}
    by_id = {r.id: r for r in runs}
    for rid in list(chosen):
        for dep in by_id[rid].depends_on:
            chosen.setdefault(dep, [dep])
    return [(r, chosen[r.id]) for r in runs if r.id in chosen]


def shrink(cfg: RunConfig, iterations: int, stand_in: dict | None) -> RunConfig:
    """The rehearsal's config: small batches, `iterations` iterations (0 stays 0), checkpoints every iteration."""
    d = cfg.model_dump()
    t, e, s, a = d["train"], d["eval"], d["sampling"], d["algo"]
    if t["iterations"] > 0:
        p, n = min(t["prompts_per_iteration"], SMALL["prompts"]), min(t["samples_per_prompt"], SMALL["samples"])
        batch = max(2, p * n // 2)
        t.update(iterations=iterations, prompts_per_iteration=p, samples_per_prompt=n, epochs=min(t["epochs"], 2),
                 batch_size=batch, micro_batch_size=max(1, batch // 4), checkpoint_every=1,
                 keep_every=min(t["keep_every"], 1), stuck_steps=min(t["stuck_steps"], 1))
    e.update(max_problems=min(e["max_problems"] or SMALL["eval_problems"], SMALL["eval_problems"]),
             samples=min(e["samples"], SMALL["eval_samples"]), every=min(e["every"], 1))
    s["max_new_tokens"] = min(s["max_new_tokens"], SMALL["new_tokens"])
    for k in ("K", "select_max_problems"):
        if a.get(k):
            a[k] = min(a[k], SMALL["K"] if k == "K" else SMALL["eval_problems"])
    if stand_in:
        if stand_in.get("path"):
            d["model"].update(hub=None, revision=None, gguf_file=None, gguf_package=None, path=stand_in["path"])
        d["task"].update(data_dir=stand_in["data_dir"], n_validation=2)
        if d["engine"]["name"] == "vllm":               # no graph compilation: minutes on a CPU, a GPU speed-up
            d["engine"]["enforce_eager"] = True
    d["backend"]["processes"] = min(d["backend"]["processes"], 2)   # data parallel: 2 processes take its paths
    d["model"]["init_require"] = None                   # a 2-iteration start cannot pass a gate
    d["progress"] = False
    return RunConfig.model_validate(d)


# --- stand-ins (harness/train/standin.py) ---------------------------------------------------------------
def needs_stand_in(cfg: RunConfig) -> bool:
    return cfg.model.init == "pretrained" and not cfg.model.init_run


# --- running -------------------------------------------------------------------------------------------------------
def _phase(run_dir: Path, log: Path, stop_after: int | None = None) -> tuple[int, float]:
    """Run `harness.run` on run_dir in a new process: (exit status, its peak resident memory in GiB)."""
    cmd = [sys.executable, "-m", "harness.run", str(run_dir)] + (["--stop-after", str(stop_after)] if stop_after else [])
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HARNESS_LOG": str(log)})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 2**20         # (the torchrun processes' peak for several processes)


def problems_of(run_dir: Path, cfg: RunConfig, log: Path) -> list[str]:
    """What the rehearsal's health checks found wrong with a finished rehearsal run (empty: all good)."""
    bad = []
    st = read_json(run_dir / "status.json", {})
    if st.get("state") != "done":
        return [f"state {st.get('state')}: {st.get('error')}"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    n = cfg.train.iterations
    if [r["iteration"] for r in train] != list(range(1, n + 1)):
        bad.append(f"training rows for iterations {[r['iteration'] for r in train]}, expected 1..{n}")
    finals = {r["split"] for r in rows if r["kind"] == "eval" and r["iteration"] == n}
    if not set(cfg.eval.final_splits) <= finals:
        bad.append(f"final evaluation on {sorted(finals)}, expected {cfg.eval.final_splits}")
    if n and "resumed at iteration 1" not in log.read_text(errors="replace"):
        bad.append("the second process did not resume from the first one's checkpoint")
    for r in train:
        if r.get("policy_changed", 1) <= 0 and r.get("grad_norm", 0) > 0:
            bad.append(f"iteration {r['iteration']}: policy_changed 0 although the gradient norm was {r['grad_norm']}")
    if not (run_dir / "final" / "config.json").exists():
        bad.append("no final/ weights")
    return bad


def projection(cfg: RunConfig, small: RunConfig, run_dir: Path) -> tuple[float, float] | None:
    """(seconds per rehearsed iteration, projected minutes of the full run's training): the rehearsal's seconds
    scaled by the work per iteration (episodes x new tokens; MC rollouts also by K, training also by epochs), times
    the iterations for methods that sample every iteration (DPO samples once and spreads its steps)."""
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    if not train:
        return None
    n, wall = train[-1]["iteration"], train[-1]["wall_s"]
    mc, tr = (sum(r.get(k, 0.0) for r in train) for k in ("t_mc_rollouts", "t_train"))
    ft, st = cfg.train, small.train
    work = (ft.prompts_per_iteration * ft.samples_per_prompt * cfg.sampling.max_new_tokens) / (
        st.prompts_per_iteration * st.samples_per_prompt * small.sampling.max_new_tokens)
    k = cfg.algo.get("K", 1) / max(small.algo.get("K", 1), 1)
    full = ((wall - mc - tr) + mc * k + tr * ft.epochs / st.epochs) * work
    return wall / n, (full if cfg.algorithm == "dpo" else full / n * ft.iterations) / 60


def report(cfg: RunConfig, small: RunConfig, run_dir: Path, head: str, peak: float, stand_in: bool) -> list[str]:
    """A rehearsed run's lines: time, peak memory, projection, and its warnings."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    gpu = [r["gpu_peak_gb"] for r in train if r.get("gpu_peak_gb")]
    line = f"    {head} | peak memory {peak:.1f} GiB (host)" + (f", {max(gpu):.1f} GiB (GPU)" if gpu else "")
    warnings = []
    if train and small.backend.zero_stage < 3 and not any(r.get("policy_changed", 0) > 0 for r in train):
        warnings.append("the policy never moved in the rehearsal: no training signal (every reward equal, e.g. from "
                        "a 2-iteration start) or no step, so the update ran on zero gradients")
    proj = projection(cfg, small, run_dir)
    if proj:
        per_it, minutes = proj
        limit = cfg.resources.time_min
        line += (f" | {per_it:.1f} s/iteration | full run's training ~{minutes:,.0f} min of resources.time_min "
                 f"{limit:,}" + (" (stand-in: not a GPU estimate)" if stand_in else ""))
        if minutes > limit and not stand_in:
            warnings.append(f"resources.time_min {limit} looks too short for {cfg.train.iterations} iterations "
                            f"(requeues resume it, but each costs a queue wait)")
    return [line] + [f"    WARNING: {w}" for w in warnings]


def main(sweep_file: str, runs, out: Path, stand_in: str | None) -> int:
    out = out.resolve().with_name(out.name + "-rehearsal")
    chosen = plan(runs)
    print(f"rehearsal of {sweep_file}: {len(runs)} runs, {len(chosen)} distinct code paths -> {out}"
          + (" (stand-in models: tiny)" if stand_in else ""), flush=True)
    failed, t_all = 0, time.time()
    for run, covers in chosen:
        run_dir = out / run.id
        shutil.rmtree(run_dir, ignore_errors=True)        # a rehearsal starts clean every time
        (out / "logs").mkdir(parents=True, exist_ok=True)
        log = out / "logs" / f"{run.id}.log"
        log.unlink(missing_ok=True)
        t0, si = time.time(), None
        try:
            if stand_in and "data_dir" in run.cfg.task:        # GSM8K / MATH: the stand-in data, and model
                from harness.train.standin import make_stand_in   # lazy: torch only when a stand-in is built
                si = make_stand_in(run.cfg.task, run.cfg.model.dtype, out / "stand-ins", SMALL["stand_in_rows"],
                                   SMALL["eval_problems"])
                si = si if needs_stand_in(run.cfg) else {"data_dir": si["data_dir"]}
            trained = run.cfg.train.iterations > 0
            small = shrink(run.cfg, 2 if trained else 0, si)
            atomic_write(run_dir / "config.yaml", dump_yaml(small))
            rc, peak = _phase(run_dir, log, stop_after=1 if trained else None)   # as at a time limit
            if rc == 0 and trained:                         # as a requeued job: resume from the checkpoint
                rc, peak2 = _phase(run_dir, log)
                peak = max(peak, peak2)
            bad = problems_of(run_dir, small, log) or ([f"exit status {rc}"] if rc else [])
        except Exception as e:                              # a config the rehearsal cannot build is a failure too
            bad, peak, small = [f"{type(e).__name__}: {e}"], 0.0, None
        others = [x for x in covers if x != run.id]
        print(f"--- {run.id}" + (f"  (stands for {len(covers)} runs: {', '.join(covers)})" if others else ""))
        if bad:
            failed += 1
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:]) if log.exists() else ""
            print("    FAILED: " + "; ".join(bad) + f"\n    log: {log}\n" + re.sub("^", "    | ", tail, flags=re.M))
            continue
        print("\n".join(report(run.cfg, small, run_dir, f"ok in {time.time() - t0:.0f}s", peak, bool(si))), flush=True)
    plotted = failed < len(chosen) and plot.main([str(out)]) == 0
    print(f"rehearsal finished in {time.time() - t_all:.0f}s: {len(chosen) - failed} of {len(chosen)} paths ok"
          + ("" if plotted or failed == len(chosen) else "; harness.reporting.plot failed") + f" ({out})")
    return 0 if failed == 0 and plotted else 1
