"""Config validation: every mistake is reported with file, key and value before anything runs or is written."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.config import ConfigError, load_sweep

GOOD = """
name: t
defaults:
  task: {name: arithmetic, n_train: 100, n_validation: 4, n_test: 4}
groups:
  - name: sft
    set: {algorithm: sft, train.iterations: 2}
  - name: rl
    init_from: sft
    seeds: [0, 1]
    variants:
      - {algorithm: ppo}
      - {algorithm: vineppo, algo: {K: 3}}
    grid: {train.lr: [1.0e-5, 3.0e-5]}
"""


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_expansion_ids_and_dependencies(tmp_path):
    sweep, runs = load_sweep(write(tmp_path, GOOD))
    assert len(runs) == 1 + 2 * 2 * 2
    sft, rl = runs[0], runs[1:]
    assert all(r.depends_on == [sft.id] and r.cfg.model.init_run == sft.id for r in rl)
    assert len({r.id for r in runs}) == len(runs)
    assert {r.cfg.algo.get("K") for r in rl if r.cfg.algorithm == "vineppo"} == {3}
    assert sorted({r.cfg.train.lr for r in rl}) == [1e-5, 3e-5]
    assert any("lr1e-05" in r.id for r in rl)
    # grid values are data (here lists of strings): their tag in a run id is made of safe characters only
    lists = GOOD.replace("train.lr: [1.0e-5, 3.0e-5]", "eval.splits: [[validation], [validation, test]]")
    ids = [r.id for r in load_sweep(write(tmp_path, lists, "lists.yaml"))[1][1:]]
    assert all(re.fullmatch(r"[A-Za-z0-9_.+=-]+", i) for i in ids) and any("splits__validation____test__" in i for i in ids)
    # ids are stable: same YAML, same ids
    assert [r.id for r in load_sweep(write(tmp_path, GOOD, "again.yaml"))[1]] == [r.id for r in runs]


@pytest.mark.parametrize("patch,needles", [
    (("algorithm: ppo", "algorithm: ppoo"), ["s.yaml", "rl", "unknown algorithm 'ppoo'"]),
    (("train.iterations: 2", "train.iterationz: 2"), ["s.yaml", "sft", "train.iterationz"]),
    (("train.iterations: 2", "train.iterations: many"), ["s.yaml", "train.iterations", "'many'"]),
    (("algo: {K: 3}", "algo: {K: 0}"), ["s.yaml", "variants[1]", "algo.K", "0"]),
    (("algo: {K: 3}", "algo: {k: 3}"), ["s.yaml", "algo.k"]),
    (("n_test: 4}", "n_test: 4, noise: 2}"), ["s.yaml", "task.noise", "2"]),
    (("init_from: sft", "init_from: sfx"), ["s.yaml", "init_from 'sfx'"]),
    (("name: t\n", "name: t\nworkerz: 3\n"), ["s.yaml", "workerz"]),
    # issue 11's validation gaps: each was a failure or a hang after validation had passed
    (("algorithm: ppo}", "algorithm: ppo, eval.final_splits: [validation, tset]}"), ["s.yaml", "final_splits", "tset"]),
    (("train.iterations: 2}", "train.iterations: 2, model.path: /no/such/model}"), ["s.yaml", "model.path",
                                                                                    "/no/such/model", "does not exist"]),
    (("algorithm: ppo}", "algorithm: ppo, train.prompts_per_iteration: 1000000000}"), ["s.yaml", "1000000000",
                                                                                   "task.n_train is 100"]),
    (("seeds: [0, 1]", "seeds: []"), ["s.yaml", "groups[1] (rl)", "seeds: [] lists no seed"]),
    (("grid: {train.lr: [1.0e-5, 3.0e-5]}", "grid: {train.lr: []}"), ["s.yaml", "groups[1] (rl)", "'train.lr'",
                                                                       "lists no value"]),
    (("train.iterations: 2}", "train.iterations: 2, train.lr: 1.0e-3, train.lr.x: 1}"), ["s.yaml", "groups[0] (sft)",
                                                                                          "'lr' is not a mapping"]),
    # names become folders under results/: nothing may climb out of it
    (("name: t\n", "name: ..\n"), ["s.yaml", "name", "'..'"]),
    (("- name: sft", "- name: ../sft"), ["s.yaml", "name", "'../sft'"]),
    (("{algorithm: ppo}", "{algorithm: ppo, label: ../../../../elsewhere}"), ["s.yaml", "label", "elsewhere"]),
    # optimizer steps on bf16 weights without an fp32 master copy: the policy would silently not move (issue 15)
    (("{algorithm: ppo}", "{algorithm: ppo, model.dtype: bfloat16}"),
     ["s.yaml", "groups[1] (rl)", "model.dtype bfloat16 with backend.name torch", "no fp32 master copy",
      "model.dtype: float32 with train.precision: bf16", "bf16_weights: true", "allow_low_precision_weights"]),
    (("{algorithm: ppo}", "{algorithm: ppo, model.dtype: float16, backend: {name: deepspeed}}"),
     ["s.yaml", "model.dtype float16 with backend.name deepspeed (bf16_weights: false)"]),
])
def test_bad_input_names_file_key_value(tmp_path, patch, needles):
    text = textwrap.dedent(GOOD).replace(*patch)
    assert text != textwrap.dedent(GOOD)
    with pytest.raises(ConfigError) as e:
        load_sweep(write(tmp_path, text))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.sweep", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin",
                               "HF_HUB_OFFLINE": "1"})


def test_cli_rejects_bad_sweep_before_writing_anything(tmp_path):
    bad = write(tmp_path, GOOD.replace("algorithm: ppo", "algorithm: nope"))
    r = run_cli(str(bad), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "unknown algorithm 'nope'" in r.stderr and "s.yaml" in r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_prints_resolved_configs_and_writes_nothing(tmp_path):
    good = write(tmp_path, GOOD)
    r = run_cli(str(good), "--dry-run", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- ") == 9 and "clip_eps: 0.2" in r.stdout and "K: 3" in r.stdout
    assert "starts from sft-s0-" in r.stdout
    assert not (tmp_path / "out").exists()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_sweep(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(write(tmp_path, "name: [unclosed"))


def test_low_precision_weights_are_allowed_where_they_are_safe_or_asked_for(tmp_path):
    for patch in ("model.dtype: bfloat16, backend: {name: deepspeed, bf16_weights: true}",   # fp32 master copy
                  "model.dtype: bfloat16, train.allow_low_precision_weights: true"):         # explicitly asked
        text = textwrap.dedent(GOOD).replace("{algorithm: ppo}", "{algorithm: ppo, %s}" % patch)
        assert any(r.cfg.model.dtype == "bfloat16" for r in load_sweep(write(tmp_path, text))[1])
    evaluate_only = textwrap.dedent(GOOD).replace("set: {algorithm: sft, train.iterations: 2}",
                                                  "set: {algorithm: sft, train.iterations: 0, model.dtype: bfloat16}")
    assert load_sweep(write(tmp_path, evaluate_only))[1][0].cfg.model.dtype == "bfloat16"    # no optimizer step


def test_what_the_refusal_prevents_bf16_weights_barely_move_at_lr_1e6(char_tok):
    """One SFT step at lr 1e-6 on the torch backend: bf16 weights (no master copy) keep most of their values, fp32
    weights under bf16 autocast (what the refusal points to) change almost all of them."""
    import algorithms
    import torch
    from harness.config import RunConfig
    from harness.runtime.models import tiny_llama
    from harness.tasks import get
    T = get("arithmetic")
    task = T(T.Config(n_train=64, n_validation=4, n_test=4))
    changed = {}
    for dtype, precision in (("bfloat16", "fp32"), ("float32", "bf16")):
        cfg = RunConfig.model_validate({
            "algorithm": "sft", "model": {"dtype": dtype},
            "train": {"iterations": 1, "batch_size": 16, "lr": 1e-6, "schedule": "constant", "warmup_ratio": 0.0,
                      "precision": precision, "allow_low_precision_weights": True}})
        policy = tiny_llama(char_tok, 64, 2, 4, 128, seed=0).to(getattr(torch, dtype))
        algo = algorithms.get("sft")(cfg, policy, char_tok, None, task)
        algo.engine = type("E", (), {"encode_prompt": lambda self, t: [char_tok.bos_token_id] + algo.encode(t)})()
        before = [p.detach().clone() for p in policy.parameters()]
        algo.update(algo.collect(0))
        diff = [(p.detach() != b) for p, b in zip(policy.parameters(), before)]
        changed[dtype] = sum(int(d.sum()) for d in diff) / sum(d.numel() for d in diff)
    assert changed["float32"] > 0.9 and changed["bfloat16"] < 0.2, changed         # measured: 1.0 and 0.021
