"""Start gates (harness/core/gate.py): a start short of its dependents' `require:` stops the sweep before they run, names
the run, the metric, the value and the bar, and exits non-zero; validation of `require`; harness.reporting.check."""
import json
import textwrap

import pytest

from harness.core import gate
from harness.config import ConfigError, load_sweep

from helpers import MINI_MODEL, MINI_TASK, sh

MINI = """
name: g
workers: 1
defaults:
""" + MINI_TASK + MINI_MODEL + """  train: {prompts_per_iteration: 4, samples_per_prompt: 4, epochs: 1, batch_size: 8, lr: 1.0e-4, checkpoint_every: 1}
  eval: {every: 0, samples: 2, temperature: 1.0, top_p: 1.0, at_start: false}
  progress: false
groups:
  - name: sft
    set: {algorithm: sft, train.iterations: 2, train.lr: 3.0e-3}
  - name: rl
    init_from: sft
    require: {split: validation, acc_greedy: BAR}
    seeds: [0, 1]
    set: {algorithm: grpo, train.iterations: 1}
"""


def write(tmp_path, bar, extra=""):
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(MINI).replace("BAR", str(bar)) + extra)
    return p


def test_require_reaches_every_dependent_and_is_validated(tmp_path):
    _, runs = load_sweep(write(tmp_path, 0.9))
    assert runs[0].cfg.model.init_require is None
    assert all(r.cfg.model.init_require.acc_greedy == 0.9 and r.cfg.model.init_require.split == "validation"
               for r in runs[1:])
    for patch, needle in [(("split: validation", "split: tset"), "require.split 'tset' is not evaluated"),
                          (("acc_greedy: 0.9", "acc_greedy: 1.5"), "acc_greedy"),
                          (("{split: validation, acc_greedy: 0.9}", "{split: validation}"), "give a bar"),
                          (("    init_from: sft\n", ""), "require needs init_from")]:
        text = (tmp_path / "g.yaml").read_text()
        (tmp_path / "bad.yaml").write_text(text.replace(*patch))
        with pytest.raises(ConfigError, match=needle):
            load_sweep(tmp_path / "bad.yaml")


def test_check_names_metric_value_and_bar(tmp_path):
    run = tmp_path / "sft-s0-abc"
    run.mkdir()
    (run / "config.yaml").write_text("train: {iterations: 5}\n")
    rows = [{"kind": "eval", "split": "validation", "iteration": 0, "acc_greedy": 0.99},
            {"kind": "eval", "split": "validation", "iteration": 5, "acc_greedy": 0.8125, "acc": 0.3}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = {"split": "validation", "acc_greedy": 0.9, "acc": None}
    why = gate.check(run, g)
    assert "sft-s0-abc" in why and "validation acc_greedy 0.812 < 0.9" in why
    assert gate.check(run, {**g, "acc_greedy": 0.8}) is None
    assert "acc 0.300 < 0.5" in gate.check(run, {**g, "acc_greedy": None, "acc": 0.5})
    assert "no final test evaluation" in gate.check(run, {**g, "split": "test"})   # the row at iteration 0 won't do


@pytest.mark.slow
def test_failed_gate_blocks_dependents_and_exits_nonzero(tmp_path):
    write(tmp_path, 1.0)                              # a 2-step SFT cannot be perfect on 8 problems... nor must it
    r = sh("harness.sweep", "g.yaml", cwd=tmp_path)
    out = tmp_path / "results" / "g"
    sft = next(out.glob("sft-*"))
    acc = [x for x in map(json.loads, (sft / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "eval"
           and x["split"] == "validation"][-1]["acc_greedy"]
    assert acc < 1.0, "the 2-step SFT happened to be perfect: the test cannot see the gate"
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"start {sft.name} failed its gate: validation acc_greedy {acc:.3f} < 1" in r.stdout
    for d in out.glob("rl-*"):
        st = json.loads((d / "status.json").read_text())
        assert st["state"] == "blocked" and "acc_greedy" in st["error"]
        assert not (d / "metrics.jsonl").exists()                  # never started
    s = sh("harness.sweep", "g.yaml", "--status", cwd=tmp_path)
    assert "blocked" in s.stdout and "failed its gate" in s.stdout
    r2 = sh("harness.sweep", "g.yaml", cwd=tmp_path)               # again: the start is done, still short
    assert r2.returncode == 1 and "failed its gate" in r2.stdout
    c = sh("harness.check", str(out), cwd=tmp_path)
    assert c.returncode == 1 and "FAIL  start" in c.stdout and "FAIL  all 3 runs are done" in c.stdout
    # a bar the start passes: the dependents run
    write(tmp_path, 0.0)
    r3 = sh("harness.sweep", "g.yaml", cwd=tmp_path)
    assert r3.returncode == 0, r3.stdout + r3.stderr
    c = sh("harness.check", str(out), "--min-gain", "-1", cwd=tmp_path)
    assert c.returncode == 0 and "PASS  start" in c.stdout and "PASS  all 3 runs are done" in c.stdout, c.stdout
    assert "2 run folders not in" in c.stdout                     # the blocked runs of the first bar
