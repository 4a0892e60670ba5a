"""Training backends on CPU: DeepSpeed (gloo; ZeRO 0-3; 1 and 2 processes) trains exactly like the torch backend,
resumes exactly, writes a consolidated HF final/, and a tiny sweep runs on it. Config mistakes are caught early."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from harness.config import ConfigError, dump_yaml, load_sweep
from harness.core.metrics import read_jsonl

from helpers import MINI, MINI_MODEL, MINI_TASK, ROOT, strip_timing

LINEAR = torch.nn.functional.linear          # ZeRO-3 must not replace it for the rest of the process
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))   # JIT ops, built once

SWEEP = """
name: b
defaults:
""" + MINI_TASK + MINI_MODEL + """  train: {prompts_per_iteration: 4, samples_per_prompt: 4, epochs: 2, batch_size: 8, micro_batch_size: 3,
          lr: 1.0e-3, precision: fp32, iterations: ITERS, checkpoint_every: 1}
  eval: {every: 0, samples: 1, temperature: 1.0, top_p: 1.0, greedy: false, at_start: false}
  threads: 1
  progress: false
groups:
  - name: g
    set: {algorithm: ALGO, algo: ALGO_OPTS}
    variants:
      - {}
      - {backend: BACKEND}
"""
ALGO_OPTS = {"sft": "{}", "ppo": "{critic_lr: 1.0e-3}", "vineppo": "{K: 2}"}
KEYS = ("loss", "grad_norm", "lr", "value_loss", "critic_grad_norm", "pg_loss", "kl_loss")


def make_runs(tmp_path, algo, backend, iters=4):
    text = (SWEEP.replace("ITERS", str(iters)).replace("ALGO_OPTS", ALGO_OPTS[algo]).replace("ALGO", algo)
            .replace("BACKEND", backend))
    (tmp_path / "s.yaml").write_text(textwrap.dedent(text))
    _, runs = load_sweep(tmp_path / "s.yaml")
    dirs = []
    for r in runs:
        (tmp_path / r.id).mkdir()
        (tmp_path / r.id / "config.yaml").write_text(dump_yaml(r.cfg))
        dirs.append(tmp_path / r.id)
    return dirs


def train_rows(run_dir):
    return [x for x in read_jsonl(run_dir / "metrics.jsonl") if x["kind"] == "train"]


def assert_same_trajectory(a, b, rel=1e-5):
    ra, rb = train_rows(a), train_rows(b)
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        for k in KEYS:
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=rel, abs=1e-6), (k, x["iteration"], x[k], y[k])


def final_weights(run_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(run_dir / "final").state_dict()


@pytest.fixture(scope="module")
def torch_sft(tmp_path_factory):
    """The torch-backend reference run (SFT, 4 steps of 3 micro-batches of a minibatch of 8)."""
    from harness.train.job import execute
    tmp = tmp_path_factory.mktemp("ref")
    ref, _ = make_runs(tmp, "sft", "{name: deepspeed}")
    execute(ref, threads=1)
    return ref


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_one_process_matches_torch(tmp_path, torch_sft, stage):
    pytest.importorskip("deepspeed")
    from harness.train.job import execute
    _, ds = make_runs(tmp_path, "sft", f"{{name: deepspeed, zero_stage: {stage}}}")
    assert execute(ds, threads=1) == "done"
    assert_same_trajectory(torch_sft, ds)
    for k, v in final_weights(torch_sft).items():           # final/ is an ordinary HF directory, same weights
        torch.testing.assert_close(final_weights(ds)[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_models_ppo_matches_torch(tmp_path, stage):
    """PPO trains a policy and a critic (two DeepSpeed engines); generation samples the trained policy (ZeRO-3:
    the HF engine's own copy, synced after every update)."""
    pytest.importorskip("deepspeed")
    from harness.train.job import execute
    ref, ds = make_runs(tmp_path, "ppo", f"{{name: deepspeed, zero_stage: {stage}}}", iters=3)
    execute(ref, threads=1)
    execute(ds, threads=1)
    assert_same_trajectory(ref, ds)
    assert [x["tokens_generated"] for x in train_rows(ref)] == [x["tokens_generated"] for x in train_rows(ds)]


def test_zero3_generation_copy_follows_training(tmp_path):
    """Under ZeRO-3 the HF engine decodes from its own full copy of the policy; after an update, sync() (inside
    the trainer's gather) makes that copy equal to the trained weights."""
    pytest.importorskip("deepspeed")
    import algorithms
    from harness import tasks
    from harness.runtime import dist
    from harness.train.build import build_engine
    from harness.runtime import models
    from harness.config import load_run_config
    _, ds = make_runs(tmp_path, "sft", "{name: deepspeed, zero_stage: 3}")
    cfg = load_run_config(ds / "config.yaml")
    tok, policy = models.load(cfg.model)
    policy.to(dist.device())                      # as the run loop does, before anything wraps or copies it
    task_cls = tasks.get(cfg.task["name"])
    engine = build_engine(cfg, policy, tok)
    assert engine.model is not policy
    algo = algorithms.get("sft")(cfg, policy, tok, engine, task_cls(task_cls.Config(**cfg.task)))
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    algo.update(algo.collect(0))
    with algo.trainers["policy"].full_model() as model:
        trained = {n: p.detach().clone() for n, p in model.named_parameters()}
        engine.sync(model)
    assert any(not torch.equal(before[n], trained[n]) for n in trained)
    for n, p in engine.model.named_parameters():
        assert torch.equal(p, trained[n]), n
    assert torch.nn.functional.linear is LINEAR   # runs later in this process compute as before


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_deepspeed_two_processes_match_torch(tmp_path, torch_sft, stage):
    """2 processes (torchrun, gloo): each takes half of every minibatch's rows; the gradient is the sum of their
    shares, so the trajectory is the one-process one. ZeRO-3's final/ is gathered from both processes' shards."""
    pytest.importorskip("deepspeed")
    from harness.train.job import execute
    _, ds = make_runs(tmp_path, "sft", f"{{name: deepspeed, zero_stage: {stage}, processes: 2}}")
    assert execute(ds, threads=1) == "done"
    assert json.loads((ds / "status.json").read_text())["processes"] == 2
    assert_same_trajectory(torch_sft, ds)
    for k, v in final_weights(torch_sft).items():
        torch.testing.assert_close(final_weights(ds)[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_deepspeed_two_processes_rl_runs_and_resumes_exactly(tmp_path):
    """PPO on 2 processes, ZeRO-3 (HF engine on its own weight copy, synced each iteration): killed after a
    checkpoint and resumed, it writes exactly the rows of an uninterrupted run (timing columns aside)."""
    pytest.importorskip("deepspeed")
    from harness.train.job import execute
    backend = "{name: deepspeed, zero_stage: 3, processes: 2}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = make_runs(tmp_path / "a", "ppo", backend, iters=4)
    _, b = make_runs(tmp_path / "b", "ppo", backend, iters=4)
    execute(a, threads=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "harness.run", str(b), "--threads", "1"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:        # kill -9 the whole job once iteration 2 is saved
        if json.loads((b / "status.json").read_text() if (b / "status.json").exists() else "{}").get("iteration",
                                                                                                    0) >= 2:
            break
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads((b / "status.json").read_text())["state"] == "running"
    execute(b, threads=1)
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(ra) == len(rb) and strip_timing(ra) == strip_timing(rb)
    assert [d.name for d in (b / "checkpoints").iterdir() if d.is_dir()] == ["save4"]   # older saves pruned


@pytest.mark.slow
def test_tiny_sweep_runs_with_deepspeed(tmp_path):
    """The end-to-end mini sweep (SFT -> PPO, VinePPO x 2 seeds) with backend: deepspeed, then the plots."""
    pytest.importorskip("deepspeed")
    text = textwrap.dedent(MINI).replace("  progress: false\n",
                                         "  progress: false\n  backend: {name: deepspeed, zero_stage: 2}\n")
    (tmp_path / "mini.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "harness.sweep", "mini.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = [p for p in (tmp_path / "results" / "mini").iterdir() if (p / "config.yaml").exists()]
    assert len(runs) == 5
    for run in runs:
        assert "name: deepspeed" in (run / "config.yaml").read_text()
        assert json.loads((run / "status.json").read_text())["state"] == "done"
        assert (run / "final" / "config.json").exists()
    r = subprocess.run([sys.executable, "-m", "harness.plot", "results/mini"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("patch,needles", [
    ("backend: {name: torch, zero_stage: 2}", ["backend.zero_stage needs backend.name: deepspeed"]),
    ("backend: {processes: 2}", ["backend.processes needs backend.name: deepspeed"]),
    ("backend: {name: deepspeed, offload_optimizer: true}", ["offload_optimizer needs backend.zero_stage >= 1"]),
    ("backend: {name: deepspeed, zero_stage: 4}", ["backend.zero_stage", "4"]),
    ("backend: {name: megatron}", ["backend.name", "megatron"]),
    ("engine: {name: hf, gpu_memory_utilization: 0.5}", ["engine.gpu_memory_utilization applies to engine.name: vllm"]),
    ("engine: {name: vllm, dtype: fp8}", ["engine.dtype", "fp8"]),
    ("engine: {name: vllm, attn_implementation: eager}", ["engine.attn_implementation applies to engine.name: hf"]),
])
def test_backend_and_engine_mistakes_are_named(tmp_path, patch, needles):
    (tmp_path / "s.yaml").write_text(textwrap.dedent(f"""
        name: t
        defaults:
          task: {{name: arithmetic, n_train: 100, n_validation: 4, n_test: 4}}
          {patch}
        groups:
          - name: sft
            set: {{algorithm: sft}}
    """))
    with pytest.raises(ConfigError) as e:
        load_sweep(tmp_path / "s.yaml")
    for n in ["s.yaml", "sft"] + needles:
        assert n in str(e.value), (n, str(e.value))


def test_learning_rate_schedule_is_pinned():
    from harness.runtime.backends import lr_factor
    from harness.config import TrainConfig
    f = lr_factor(TrainConfig(warmup_ratio=0.2, schedule="linear"), total=10)        # warm = 2 steps
    assert [round(f(s), 6) for s in range(11)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    g = lr_factor(TrainConfig(warmup_ratio=0.0, schedule="constant"), total=10)
    assert [g(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    w = lr_factor(TrainConfig(warmup_ratio=0.2, schedule="wsd", decay_ratio=0.3), total=10)   # decays from step 7
    assert [round(w(s), 6) for s in range(11)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.666667, 0.333333, 0.0]


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_bf16_checkpoint_resumes(tmp_path, stage):
    """ZeRO-1/2 in bf16 mode (the 7B rows of table1) keeps three of DeepSpeed's data classes in its optimizer
    states: the checked loader admits them, so a stopped run resumes (the table1 rehearsal found them refused)."""
    from harness.train.job import execute
    d = make_runs(tmp_path, "sft", f"{{name: deepspeed, zero_stage: {stage}, bf16_weights: true}}", iters=2)[1]
    assert execute(d, threads=1, stop_after=1) == "stopped"
    assert execute(d, threads=1) == "done"
    assert [r["iteration"] for r in train_rows(d)] == [1, 2]


def test_deepspeed_bf16_mode_moves_its_fp32_master_weights_at_lr_1e6(tmp_path):
    """table1's precision (bf16 weights, fp32 master copy, ZeRO-0): every step at lr 1e-6 moves the master copy,
    which is what the movement metrics and the Stuck check read (the bf16 weights themselves change only when the
    master crosses a bf16 step)."""
    from harness.train.job import execute
    d = make_runs(tmp_path, "sft", "{name: deepspeed, zero_stage: 0, bf16_weights: true}", iters=2)[1]
    text = (d / "config.yaml").read_text()
    assert "lr: 0.001" in text and "dtype: float32" in text
    (d / "config.yaml").write_text(text.replace("lr: 0.001", "lr: 1.0e-06").replace("dtype: float32", "dtype: bfloat16"))
    assert execute(d, threads=1) == "done"
    rows = train_rows(d)
    assert len(rows) == 2 and all(r["policy_changed"] > 0.9 and 0 < r["policy_update_rel"] < 1e-4 for r in rows), rows
