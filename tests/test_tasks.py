"""GSM8K and MATH tasks on the shipped subsets (tests/data): loaders, prompts, graders, step splitters."""
import json
import os
import re
import time
from pathlib import Path

import pytest

from harness import tasks
from harness.tasks import check as task_check
from harness.tasks.check import perturb
from harness.tasks.grader import gsm8k_answer, last_boxed
from harness.tasks.math_steps import protected_spans, split_steps_authors

DATA = Path(__file__).parent / "data"


def build(name, **kw):
    cls = tasks.get(name)
    return cls(cls.Config(data_dir=str(DATA / name), n_validation=5, **kw))


@pytest.fixture(scope="module")
def gsm8k():
    return build("gsm8k")


@pytest.fixture(scope="module")
def math_task():
    return build("math")


def test_loaders_splits_and_carve(gsm8k, math_task):
    assert [len(gsm8k.problems(s)) for s in ("train", "validation", "test")] == [26, 5, 20]
    assert [len(math_task.problems(s)) for s in ("train", "validation", "test")] == [25, 5, 25]
    again = build("gsm8k")
    assert [p["id"] for p in again.problems("validation")] == [p["id"] for p in gsm8k.problems("validation")]
    other = build("gsm8k", split_seed=1)
    assert [p["id"] for p in other.problems("validation")] != [p["id"] for p in gsm8k.problems("validation")]
    ids = {p["id"] for s in ("train", "validation") for p in gsm8k.problems(s)}
    assert len(ids) == 31                                      # a partition of the train file
    assert all("<<" not in p["solution"] for p in gsm8k.problems("train"))     # calculator notes removed


def test_prompt_and_stop(gsm8k, math_task):
    p = gsm8k.problems("test")[0]
    assert gsm8k.prompt(p) == f"[MATH_TASK] Problem:\n{p['question']}\n\nSolution:"
    assert gsm8k.stop == math_task.stop == ("\n\n\nProblem:",)
    assert gsm8k.sft_target(p).startswith("\n") and gsm8k.sft_target(p).endswith(f"#### {p['answer']}")


def test_bad_config_names_key():
    cls = tasks.get("gsm8k")
    with pytest.raises(ValueError, match="task.n_validation=500"):
        cls(cls.Config(data_dir=str(DATA / "gsm8k"), n_validation=500))
    with pytest.raises(ValueError, match="no such folder"):
        cls.Config(data_dir=str(DATA / "nope"))
    with pytest.raises(FileNotFoundError, match="task.data_dir"):
        cls(cls.Config(data_dir=str(DATA)))                   # a folder without train.jsonl
    from harness.config import RunConfig
    with pytest.raises(ValueError, match="task.n_validation"):
        RunConfig.model_validate({"algorithm": "ppo", "task": {"name": "gsm8k", "n_validation": 0}})
    assert cls.Config(data_dir="tests/data/gsm8k").data_dir    # relative to the repository from anywhere


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_gold_correct_perturbed_wrong(name):
    task = build(name)
    cls = tasks.get(name)
    probs = task.problems("train") + task.problems("validation") + task.problems("test")
    gold = cls.grade_many([(task.sft_target(p), p["answer"]) for p in probs])
    assert gold == [1.0] * len(probs), [p["id"] for p, g in zip(probs, gold) if g != 1.0]
    if name == "gsm8k":
        wrong = [task.sft_target(p)[:task.sft_target(p).rfind("####")] + "#### " + perturb(p["answer"]) for p in probs]
    else:
        wrong = [f"so it is \\boxed{{{perturb(p['answer'])}}}." for p in probs]
    assert cls.grade_many([(w, p["answer"]) for w, p in zip(wrong, probs)]) == [0.0] * len(probs)
    # grade() is reachable without building the task, and agrees with grade_many
    assert tasks.get(name).grade(task.sft_target(probs[0]), probs[0]["answer"]) == 1.0


def test_grader_equivalences():
    g, m = tasks.get("gsm8k").grade, tasks.get("math").grade
    assert g("so #### 1,000", "1000") == g("#### 18.0", "18") == g("#### $18", "18") == 1.0
    assert g("the answer is 18", "18") == 0.0                    # no #### : no answer
    assert g("#### 1,450,001", "1450000") == g("#### 18.5", "18") == 0.0
    assert m("\\boxed{0.5}", "\\frac{1}{2}") == m("\\boxed{\\frac12}", "\\frac{1}{2}") == 1.0
    assert m("x = \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)") == 1.0
    assert m("\\boxed{3} then \\boxed{4}", "4") == 1.0 and m("\\boxed{4} then \\boxed{3}", "4") == 0.0
    assert m("the answer is 4", "4") == 0.0                      # MATH needs \boxed{}
    assert m("\\boxed{6x - 7y + 4 = 0}", "5x - 7y + 4 = 0") == 0.0    # equations: not just their right sides
    assert m("\\boxed{5x-7y+4=0}", "5x - 7y + 4 = 0") == 1.0
    assert last_boxed("\\boxed{\\frac{1}{2}") is None and last_boxed("\\boxed 5$.") == "5"
    assert gsm8k_answer("a\n#### 72\n\nmore") == "72"


def test_pathological_latex_times_out_to_zero():
    """A 10,000-character nested expression must come back as 0 within the grader's timeout, not hang."""
    from harness.tasks import grader
    nested = "\\frac{" * 1000 + "x" + "}{2}" * 1000
    assert len(nested) >= 10_000
    t0 = time.perf_counter()
    assert tasks.get("math").grade(f"\\boxed{{{nested}}}", "1") == 0.0
    assert grader.is_equiv_many([(nested[:1999], "1")], timeout=1.0) == [False]
    assert time.perf_counter() - t0 < 3 * (grader.TIMEOUT_S + 3)
    assert tasks.get("math").grade("\\boxed{2}", "2") == 1.0      # the pool still works afterwards


def test_hung_worker_is_killed(monkeypatch):
    """A worker that never returns (C code out of reach of math-verify's own timeout) is killed at its deadline,
    the item scores 0 and the next call gets a fresh pool."""
    from harness.tasks import grader
    monkeypatch.setattr(grader, "_verify", grader._hang)
    t0 = time.perf_counter()
    assert grader.is_equiv_many([("1", "2"), ("3", "4")], timeout=0.5) == [False, False]
    assert time.perf_counter() - t0 < 10 and grader._POOL is None
    monkeypatch.undo()
    assert tasks.get("math").grade("\\boxed{0.5}", "\\frac{1}{2}") == 1.0


def _check_steps(text, steps, math_blocks=True):
    assert "".join(steps) == text
    assert all(steps)
    if math_blocks:
        spans = protected_spans(text)
        pos = 0
        for s in steps[:-1]:
            pos += len(s)
            assert not any(a < pos < b for a, b in spans), (text, steps)
            # independent check: an even number of unescaped $ before each boundary (solutions without [asy])
            if "[asy]" not in text:
                assert len(re.findall(r"(?<!\\)\$", text[:pos])) % 2 == 0, (text[:pos], steps)


def test_gsm8k_splitter(gsm8k):
    for split in ("train", "validation", "test"):
        for p in gsm8k.problems(split):
            text = gsm8k.sft_target(p)
            steps = gsm8k.split_steps(text)
            _check_steps(text, steps, math_blocks=False)
            assert "####" in steps[-1] and not steps[-1].lstrip().startswith("####")
            assert len(steps) == text.strip("\n").count("\n")         # one step per line, #### line merged
    assert gsm8k.split_steps("\nA.\n\nB.\n#### 3") == ["\nA.", "\n\nB.\n#### 3"]
    assert gsm8k.split_steps("") == [""]


def test_math_splitter_blocks():
    """`blocks`: no boundary inside a math block, long prose halved."""
    task = build("math", splitter="blocks")
    n = []
    for split in ("train", "validation", "test"):
        for p in task.problems(split):
            text = task.sft_target(p)
            steps = task.split_steps(text)
            _check_steps(text, steps)
            n.append(len(steps))
    assert max(n) > 3 and min(n) >= 1
    text = "First we note $x = 1. Then y$ is big. Then we compute\n\\[a = b\nc = d.\\]\nSo $\\boxed{1}$."
    _check_steps(text, task.split_steps(text))
    long = "We have " + ", ".join(f"item number {i}" for i in range(30)) + "."
    assert all(len(s) <= 100 for s in task.split_steps(long))


def test_math_splitter_authors(math_task):
    """The default follows the authors' split_solution_inplace: every shipped MATH500 solution is cut exactly as their
    code cuts it (harness/tasks/authors_steps.json), and the hand-built cases below are their code's output."""
    assert math_task.cfg.splitter == "authors"
    ref = json.loads(task_check.AUTHORS_STEPS.read_text())["splits"]["math/test"]
    texts = [math_task.sft_target(p) for p in math_task.problems("test")]
    ag = task_check.agreement(ref, texts, [math_task.split_steps(t) for t in texts])
    assert ag == {"n": 25, "exact": 1.0, "precision": 1.0, "recall": 1.0}
    blocks = task_check.agreement(ref, texts, [build("math", splitter="blocks").split_steps(t) for t in texts])
    assert blocks["n"] == 25 and blocks["exact"] < 0.5 and blocks["recall"] < 0.5      # about half the states
    for split in ("train", "validation"):
        for p in math_task.problems(split):
            _check_steps(math_task.sft_target(p), math_task.split_steps(math_task.sft_target(p)), math_blocks=False)
    cases = {   # text -> the authors' steps
        "\nFirst we note that $x = 1.$ Then the sum is big. So we compute\n\\[a = b\nc = d.\\]\nSo $\\boxed{1}$.":
            ["\nFirst we note that $x = 1.$", " Then the sum is big.", " So we compute\n\\[a = b",  # newline in \[..\]
             "\nc = d.\\]\nSo $\\boxed{1}$."],
        "\nWe have $$1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 + 14 + 15 = 120 = 2 \\cdot 60 = 4 \\cdot 30 = "
        "8 \\cdot 15,$$ so the answer is $\\boxed{120}$.":                  # a long part halved in math at "=", ",$"
            ["\nWe have $$1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 + 14 + 15 =",
             " 120 = 2 \\cdot 60 = 4 \\cdot 30 = 8 \\cdot 15,$", "$ so the answer is $\\boxed{120}$."],
        "\nThe answer, which we found earlier by careful counting of all the cases and checking each of them, is small "
        "and to be exact it is 5.":                                            # in prose at the "," nearest the middle
            ["\nThe answer, which we found earlier by careful counting of all the cases and",
             " checking each of them, is small and to be exact it is 5."],
    }
    for text, steps in cases.items():
        assert split_steps_authors(text) == steps
    # where the authors' code fails an assertion (a part under 20 characters with nothing to join), one step
    assert split_steps_authors("\n$\\boxed{5}$") == ["\n$\\boxed{5}$"] and split_steps_authors("") == [""]


def test_check_prints_agreement_with_the_authors(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert task_check.main([str(DATA), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["math"]["test"]["steps"]["authors"]["authors"]["exact"] == 1.0
    assert r["math"]["test"]["steps"]["blocks"]["authors"]["exact"] < 0.5
    assert r["gsm8k"]["test"]["steps"]["lines"]["authors"]["exact"] >= 0.99
    assert r["math"]["train"]["steps"]["authors"]["authors"] is None          # no reference cuts for train
    assert "splitter authors: steps/solution mean" in capsys.readouterr().out


def test_registered():
    assert {"gsm8k", "math", "arithmetic"} <= set(tasks.names())


def test_a_grader_pool_that_cannot_start_raises(tmp_path):
    """Spawned workers cannot start from a script fed on standard input: that must be an error, not every answer
    scored 0."""
    import subprocess
    import sys
    script = "from harness import tasks\nprint(tasks.get('math').grade('\\\\boxed{0.5}', '\\\\frac{1}{2}'))\n"
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, timeout=120)
    assert r.returncode != 0 and "GraderError: the math-verify worker pool failed" in r.stderr, r.stderr[-2000:]


def test_timeouts_are_counted(monkeypatch):
    from harness.tasks import grader
    grader.pop_counts()
    monkeypatch.setattr(grader, "_verify", grader._hang)
    assert grader.is_equiv_many([("1", "2"), ("3", "4")], timeout=0.5) == [False, False]
    assert grader.pop_counts() == {"graded": 2, "timeouts": 2} and grader.pop_counts()["timeouts"] == 0
