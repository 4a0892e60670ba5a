"""The SLURM executor, on a real cluster (`slurm/local-cluster.sh up`): profiles, arrays and afterok dependencies,
requeue on USR2 and on `scontrol requeue`, SIGKILL then re-submission, failure reporting, nothing submitted for an
invalid sweep. Without a reachable cluster the cluster tests are skipped, unless HARNESS_REQUIRE_SLURM=1 (CI)."""
import functools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.config import ConfigError, load_sweep
from harness.core.metrics import read_json, read_jsonl
from harness.launch.slurm import Profile, job_groups, job_resources, load_profile
from harness.launch.squeue import check_cluster
from harness.launch.status import last_error_line

from helpers import MINI_MODEL, MINI_RUNS, MINI_TASK, ROOT, env, sh, strip_timing
from test_gate import MINI as GATE_MINI
PROFILE = ROOT / "slurm" / "local.yaml"
# helpers.MINI, one thread per run (results must not depend on where the run happens), plus: PPO without
# periodic checkpoints (a resume after USR2 can only come from the checkpoint saved on the signal), VinePPO on the
# local cluster's two stand-in GPUs (device-seconds are charged for both) and long enough to outlive the seconds a hard
# requeue takes to kill it (SIGTERM is ignored, SIGKILL follows ~4.5 s later on the local cluster; 40 iterations took
# 4 s on a CI machine and finished first), and a run that raises.
SWEEP = """
name: NAME
defaults:
  threads: 1
  resources: {cpus: 1, mem_gb: 1, time_min: 30}
""" + MINI_TASK + MINI_MODEL + MINI_RUNS + """    variants:
      - {algorithm: ppo, train.iterations: 12, train.checkpoint_every: 100}
      - {algorithm: vineppo, train.iterations: 120, eval.every: 30, algo: {K: 2}, resources.gpus: 2}
  - name: broken
    set: {algorithm: sft, train.iterations: 2, model.path: /etc}     # exists, holds no model: fails in the job
"""


def sweep(*args, cwd, timeout=600):
    return sh("harness.sweep", *args, cwd=cwd, timeout=timeout)


@functools.cache
def cluster_problem():
    return check_cluster()


def need_cluster():
    why = cluster_problem()
    if why and os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
        pytest.fail(f"HARNESS_REQUIRE_SLURM=1 but no SLURM cluster is reachable: {why}")
    if why:
        pytest.skip(f"no SLURM cluster reachable ({why}); start one with `slurm/local-cluster.sh up`")


def jobs_named(name: str, queue_only=False) -> str:
    q = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True, check=True).stdout
    if queue_only:
        return q
    states = "PD,R,RQ,RS,S,CD,CA,F,TO,NF,OOM,PR,BF,DL"                  # explicit: else jobs that never started are
    a = subprocess.run(["sacct", "-n", "-X", "-S", "2000-01-01", "-E", "now", "--name", name, "-s", states],  # left out
                       capture_output=True, text=True, check=True)
    return q + a.stdout


# --- no cluster needed ---------------------------------------------------------------------------------------------
def test_profile_errors_name_file_key_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: gpu\npartiton: gpu2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'partiton'"):
        load_profile(bad)
    bad.write_text("gpus_per_node: four\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: gpus_per_node: .*integer.*\(got 'four'\)"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="no such cluster profile"):
        load_profile(tmp_path / "missing.yaml")
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP).replace("NAME", "prof"))
    r = sweep("s.yaml", "--cluster", "bad.yaml", cwd=tmp_path)          # the CLI: status 2, nothing written
    assert r.returncode == 2 and "bad.yaml: gpus_per_node" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()
    for p in (ROOT / "slurm").glob("*.yaml"):                           # the shipped profiles are valid
        load_profile(p)


def test_job_resources_merge_and_arrays(tmp_path):
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP).replace("NAME", "merge"))
    _, runs = load_sweep(tmp_path / "s.yaml")
    by = {r.id.rsplit("-", 1)[0]: r for r in runs}
    p = Profile(gpus_per_node=4, cpus_per_gpu=8, mem_gb_per_gpu=64, max_time_min=20)
    assert job_resources(by["sft-s0"], p) == {"gpus": 0, "cpus": 1, "mem_gb": 1, "time_min": 20}
    assert job_resources(by["rl-vineppo-s0"], p) == {"gpus": 2, "cpus": 16, "mem_gb": 128, "time_min": 20}
    with pytest.raises(ConfigError, match=r"run rl-vineppo-s1-\w+: resources.gpus: 2 GPUs .*gpus_per_node: 1"):
        job_resources(by["rl-vineppo-s1"], Profile(gpus_per_node=1))
    shapes = {r.id: job_resources(r, p) for r in runs}
    groups = [[r.id.rsplit("-", 1)[0] for r in g] for g in job_groups(runs, shapes)]
    # SFT and the broken run share resources and have no dependency: one array; the RL runs follow SFT, split by
    # resources (PPO: CPU; VinePPO: 2 GPUs).
    assert groups == [["sft-s0", "broken-sft-s0"], ["rl-ppo-s0", "rl-ppo-s1"], ["rl-vineppo-s0", "rl-vineppo-s1"]]
    sft_done = [r for r in runs if not r.id.startswith("sft")]            # SFT finished earlier: no dependency
    assert len(job_groups(sft_done, shapes)) == 3


def test_charged_devices(monkeypatch):
    import torch

    from harness.train.loop import charged_devices
    for k in ("SLURM_JOB_ID", "SLURM_GPUS_ON_NODE", "SLURM_JOB_NUM_NODES"):
        monkeypatch.delenv(k, raising=False)
    assert charged_devices(torch.device("cpu")) == 1
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert charged_devices(torch.device("cpu")) == 1                   # a CPU-only job
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert charged_devices(torch.device("cpu")) == 8                   # billed for the allocation, used or not


def test_last_error_line(tmp_path):
    log = tmp_path / "x.err"
    log.write_text("Traceback (most recent call last):\n  File 'a.py'\nValueError: bad lr\nsrun: ok\n\n")
    assert last_error_line(log) == "ValueError: bad lr"
    log.write_text("just output\n  vloss_total += float(vloss) * w\n")    # no error line (a SIGKILL): nothing
    assert last_error_line(log) == ""
    assert last_error_line(tmp_path / "none.err") == ""


# --- on the cluster ------------------------------------------------------------------------------------------------
def test_invalid_sweep_submits_nothing(tmp_path):
    need_cluster()
    name = f"invalid{os.getpid()}{int(time.time())}"
    bad = textwrap.dedent(SWEEP).replace("NAME", name) + "    grid: {train.lr: [1.0e-3, -1.0]}\n"
    (tmp_path / "s.yaml").write_text(bad)                                # the last grid point of the last group
    r = sweep("s.yaml", "--cluster", str(PROFILE), cwd=tmp_path)
    assert r.returncode == 2 and "groups[2] (broken)" in r.stderr and "train.lr" in r.stderr and "-1.0" in r.stderr
    big = textwrap.dedent(SWEEP).replace("NAME", name).replace("resources.gpus: 2", "resources.gpus: 3")
    (tmp_path / "s.yaml").write_text(big)                                # more GPUs than a node of the profile has
    r = sweep("s.yaml", "--cluster", str(PROFILE), cwd=tmp_path)
    assert r.returncode == 2 and "resources.gpus: 3 GPUs" in r.stderr
    assert not (tmp_path / "results").exists()
    assert jobs_named(name).strip() == ""                               # SLURM never heard of this sweep


@pytest.mark.slow
def test_refused_submission_leaves_nothing_queued(tmp_path):
    need_cluster()
    name = f"refused{os.getpid()}{int(time.time())}"
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP).replace("NAME", name))
    (tmp_path / "h100.yaml").write_text("partition: debug\ngpus_per_node: 2\ngpu_type: h100\n")   # no such GPUs here
    r = sweep("s.yaml", "--cluster", "h100.yaml", cwd=tmp_path)       # CPU arrays accepted, then the GPU one refused
    assert r.returncode == 1 and "SLURM refused a job" in r.stderr and "cancelled the 4 jobs" in r.stderr, r.stderr
    assert jobs_named(name, queue_only=True).strip() == ""
    status = sweep("s.yaml", "--status", cwd=tmp_path).stdout
    assert "6 runs: 6 failed" in status and status.count("error: submission failed") == 6, status


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The sweep run locally (the reference), then on SLURM: its SFT run alone, held, then cancelled (--cancel); the
    whole sweep, while three of its runs are disrupted: rl-ppo-s0 gets USR2 (what SLURM sends before the time limit),
    rl-vineppo-s0 is requeued by `scontrol requeue` (hard: killed and restarted), rl-vineppo-s1's process is
    SIGKILLed; then the sweep is submitted again."""
    need_cluster()
    d = tmp_path_factory.mktemp("slurm")
    name = f"slurmtest{os.getpid()}"
    (d / "s.yaml").write_text(textwrap.dedent(SWEEP).replace("NAME", name))
    _, runs = load_sweep(d / "s.yaml")
    rid = {r.id.rsplit("-", 1)[0]: r.id for r in runs}
    ref = sweep("s.yaml", "--output", "local", "--workers", "2", "--only", "sft-*", "--only", "rl-*", cwd=d)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    out = d / "slurm"
    (d / "held.yaml").write_text(PROFILE.read_text() + "sbatch: {hold: true}\n")   # stays pending: no race
    sft = sweep("s.yaml", "--cluster", "held.yaml", "--output", "slurm", "--only", "sft-*", cwd=d)
    assert sft.returncode == 0 and "submitted 1 runs" in sft.stdout, sft.stdout + sft.stderr
    cancel = sweep("s.yaml", "--cancel", "--output", "slurm", cwd=d)
    deadline = time.time() + 60
    while jobs_named(name, queue_only=True).strip() and time.time() < deadline:
        time.sleep(0.5)
    cancelled = sweep("s.yaml", "--status", "--output", "slurm", cwd=d).stdout
    p = subprocess.Popen([sys.executable, "-m", "harness.sweep", "s.yaml", "--cluster", str(PROFILE), "--output",
                          "slurm", "--wait"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env())
    actions = {"rl-ppo-s0": "usr2", "rl-vineppo-s0": "requeue", "rl-vineppo-s1": "kill"}
    done, deadline = {}, time.time() + 400
    while len(done) < len(actions) and time.time() < deadline and p.poll() is None:
        for short, action in actions.items():
            run = out / rid[short]
            if short in done or sum(r["kind"] == "train" for r in read_jsonl(run / "metrics.jsonl")) < 2:
                continue
            job = read_json(run / "job.json")["job_id"]
            if action == "usr2":
                subprocess.run(["scancel", "--signal=USR2", job], check=True)
            elif action == "requeue":
                subprocess.run(["scontrol", "requeue", job], check=True)
            else:
                os.kill(read_json(run / "status.json")["pid"], signal.SIGKILL)
            done[short] = time.time()
        time.sleep(0.05)
    first, _ = p.communicate(timeout=max(10, deadline - time.time()))
    assert set(done) == set(actions), f"not every disruption happened: {done}\n{first}"
    status = sweep("s.yaml", "--status", "--output", "slurm", cwd=d)
    second = sweep("s.yaml", "--cluster", str(PROFILE), "--output", "slurm", "--wait", cwd=d)
    return {"dir": d, "out": out, "ref": d / "local", "rid": rid, "runs": runs, "first": first,
            "first_rc": p.returncode, "cancel": cancel.stdout, "cancelled": cancelled,
            "status": status.stdout, "second": second.stdout + second.stderr, "second_rc": second.returncode,
            "final_status": sweep("s.yaml", "--status", "--output", "slurm", cwd=d).stdout}


def log_of(scenario, short) -> str:
    return Path(read_json(scenario["out"] / scenario["rid"][short] / "job.json")["log"]).read_text()


@pytest.mark.slow
def test_slurm_sweep_matches_local(scenario):
    s, rid = scenario, scenario["rid"]
    good = [k for k in rid if not k.startswith("broken")]
    for short in good:
        a = read_jsonl(s["ref"] / rid[short] / "metrics.jsonl")
        b = read_jsonl(s["out"] / rid[short] / "metrics.jsonl")
        assert len(a) == len(b) and strip_timing(a) == strip_timing(b), short
        assert read_json(s["out"] / rid[short] / "status.json")["state"] == "done"
    jobs = {k: read_json(s["out"] / rid[k] / "job.json") for k in good}
    arrays = {k: j["job_id"].split("_")[0] for k, j in jobs.items()}
    assert arrays["rl-ppo-s0"] == arrays["rl-ppo-s1"] != arrays["rl-vineppo-s0"]
    assert jobs["rl-ppo-s0"]["depends_on"] == [jobs["sft-s0"]["job_id"]]           # afterok, not a race
    assert jobs["rl-vineppo-s0"]["depends_on"] == [jobs["sft-s0"]["job_id"]]
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(j["job_id"] for j in jobs.values()), "-o",
                           "JobID,Start,End,AllocTRES"], capture_output=True, text=True, check=True).stdout
    rows = {x.split("|")[0]: x.split("|")[1:] for x in acct.splitlines()}
    sft_end = rows[jobs["sft-s0"]["job_id"]][1]
    for k in ("rl-ppo-s0", "rl-ppo-s1", "rl-vineppo-s0"):
        assert rows[jobs[k]["job_id"]][0] >= sft_end                                # ISO times compare as strings
    assert "gres/gpu=2" in rows[jobs["rl-vineppo-s0"]["job_id"]][2]
    for short, gpus in (("rl-vineppo-s0", 2), ("rl-ppo-s1", 1)):                    # device-s = allocation x wall
        for r in read_jsonl(s["out"] / rid[short] / "metrics.jsonl"):
            assert r["device_s"] == pytest.approx(gpus * r["wall_s"], abs=0.01)


@pytest.mark.slow
def test_cancelled_run_is_resubmitted(scenario):
    s, sft = scenario, scenario["rid"]["sft-s0"]
    assert re.match(r"cancelled 1 SLURM jobs: \d+", s["cancel"]), s["cancel"]
    line = next(x for x in s["cancelled"].splitlines() if x.startswith(sft))
    assert " cancelled " in line and "6 runs: 1 cancelled, 5 new" in s["cancelled"], s["cancelled"]
    assert "6 of 6 runs to do" in s["first"]                      # the cancelled SFT run was submitted again ...
    assert read_json(s["out"] / sft / "status.json")["state"] == "done"     # ... and matches (test above)


@pytest.mark.slow
def test_preempted_runs_requeue_and_resume_exactly(scenario):
    s, rid = scenario, scenario["rid"]
    log = log_of(s, "rl-ppo-s0")                       # USR2: checkpoint at the next iteration boundary, requeue
    stop = re.search(r"stopping at iteration (\d+) \(checkpoint saved\)", log)
    assert stop and "Requeued job" in log, log[-3000:]
    assert f"resumed at iteration {stop.group(1)}" in log and int(stop.group(1)) >= 2
    log = log_of(s, "rl-vineppo-s0")                   # scontrol requeue: killed, restarted from a periodic checkpoint
    resumed = re.search(r"resumed at iteration (\d+)", log)
    assert resumed and 1 <= int(resumed.group(1)) < 120, log[-3000:]       # mid-run
    assert "DUE TO JOB REQUEUE" in Path(read_json(s["out"] / rid["rl-vineppo-s0"] / "job.json")["stderr"]).read_text()
    for short in ("rl-ppo-s0", "rl-vineppo-s0"):
        a = read_jsonl(s["ref"] / rid[short] / "metrics.jsonl")
        b = read_jsonl(s["out"] / rid[short] / "metrics.jsonl")
        assert strip_timing(a) == strip_timing(b)
        train = [r["iteration"] for r in b if r["kind"] == "train"]
        assert train == list(range(1, len(train) + 1))


@pytest.mark.slow
def test_killed_run_resumes_when_the_sweep_is_submitted_again(scenario):
    s, rid = scenario, scenario["rid"]
    line = [x for x in s["status"].splitlines() if x.startswith(rid["rl-vineppo-s1"])][0]
    assert " failed " in line, s["status"]                       # died without saying so: SLURM says FAILED
    assert "2 of 6 runs to do" in s["second"] and "(4 already done, 0 queued)" in s["second"], s["second"]
    log = log_of(s, "rl-vineppo-s1")                             # the log of the re-submitted job
    resumed = re.search(r"resumed at iteration (\d+)", log)
    assert resumed and 1 <= int(resumed.group(1)) < 120, log[-3000:]
    a = read_jsonl(s["ref"] / rid["rl-vineppo-s1"] / "metrics.jsonl")
    b = read_jsonl(s["out"] / rid["rl-vineppo-s1"] / "metrics.jsonl")
    assert len(a) == len(b) and strip_timing(a) == strip_timing(b)             # no row duplicated, none lost


@pytest.mark.slow
def test_failed_job_is_reported_with_its_log(scenario):
    s, rid = scenario, scenario["rid"]
    assert s["first_rc"] == 1 and s["second_rc"] == 1
    lines = s["final_status"].splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith(rid["broken-sft-s0"]))
    assert " failed " in lines[i] and "error:" in lines[i + 1], s["final_status"]
    assert "/etc" in lines[i + 1], s["final_status"]
    log = Path(lines[i].split()[-1])
    assert log.exists() and log == Path(read_json(s["out"] / rid["broken-sft-s0"] / "job.json")["log"])
    assert "6 runs: 5 done, 1 failed" in lines[-1]               # the rest of the sweep is unaffected
    assert f"failed: {rid['broken-sft-s0']}" in s["second"] and "log:" in s["second"]


# test_gate.py's mini sweep on the cluster: one thread, small jobs, a bar a 2-step SFT cannot reach.
GATED = textwrap.dedent(GATE_MINI).replace("BAR", "1.0").replace(
    "defaults:\n", "defaults:\n  threads: 1\n  resources: {cpus: 1, mem_gb: 1, time_min: 30}\n")


def test_failed_gate_cancels_dependent_jobs_before_they_start(tmp_path):
    """The start's job checks its dependents' gate: short of it, the job fails, SLURM cancels the afterok jobs (they
    never run), and they are reported blocked with the numbers."""
    need_cluster()
    name = f"gated{os.getpid()}"
    (tmp_path / "s.yaml").write_text(GATED.replace("name: g\n", f"name: {name}\n"))
    r = sweep("s.yaml", "--cluster", str(PROFILE), "--wait", cwd=tmp_path)
    out = tmp_path / "results" / name
    sft = next(out.glob("sft-*"))
    assert read_json(sft / "status.json")["state"] == "done"
    acc = [x for x in read_jsonl(sft / "metrics.jsonl") if x["kind"] == "eval" and x["split"] == "validation"]
    assert acc[-1]["acc_greedy"] < 1.0, "the 2-step SFT happened to be perfect: the test cannot see the gate"
    assert r.returncode == 1, r.stdout + r.stderr
    for d in out.glob("rl-*"):
        st = read_json(d / "status.json")
        assert st["state"] == "blocked" and "failed its gate: validation acc_greedy" in st["error"]
        assert not (d / "metrics.jsonl").exists() and "pid" not in st          # never started
    s = sweep("s.yaml", "--status", cwd=tmp_path)
    assert s.stdout.count("blocked") >= 2 and "failed its gate" in s.stdout
    r2 = sweep("s.yaml", "--cluster", str(PROFILE), cwd=tmp_path)              # resubmitted: nothing submitted
    assert r2.returncode == 1 and "failed its gate" in r2.stdout and "submitted" not in r2.stdout
