"""The embedded tiny task: deterministic disjoint splits, exact steps, the grader and the demonstration noise."""
import random

import pytest

from harness.tasks import get

T = get("arithmetic")


def test_splits_are_deterministic_disjoint_and_solutions_correct():
    a, b = T(T.Config(n_train=500)), T(T.Config(n_train=500))
    qs = {s: {p["question"] for p in a.problems(s)} for s in ("train", "validation", "test")}
    assert [p["question"] for p in a.problems("test")] == [p["question"] for p in b.problems("test")]
    assert not (qs["train"] & qs["test"]) and not (qs["train"] & qs["validation"]) and not (qs["validation"] & qs["test"])
    # the evaluation sets do not depend on n_train
    assert [p["question"] for p in T(T.Config(n_train=50)).problems("test")] == [p["question"] for p in a.problems("test")]
    for p in a.problems("test")[:200]:
        sol = a.solution(p)
        steps = T.split_steps(sol)
        assert "".join(steps) == sol and len(steps) == len(p["ops"]) + 1
        assert T.grade(sol, p["answer"]) == 1.0
        wrong = str((int(p["answer"]) + 1) % 10)
        assert T.grade(sol[:-1] + wrong, p["answer"]) == 0.0


def test_grader_needs_the_final_answer_marker():
    assert T.grade("1a+1=2;#2", "2") == 1.0
    assert T.grade("1a+1=2;#2 ", "2") == 1.0
    assert T.grade("1a+1=2;2", "2") == 0.0
    assert T.grade("#2;1a+1=3", "2") == 0.0
    assert T.grade("", "2") == 0.0


def test_demonstration_noise_rate_and_consistency():
    t = T(T.Config(noise=0.2, n_train=2000))
    rng = random.Random(0)
    wrong = total = 0
    for p in t.problems("train"):
        demo = t.sft_target(p, rng)
        v = p["start"]
        for step, (op, b) in zip(demo.split(";")[:-1], p["ops"]):
            shown_v, result = int(step[0]), int(step.split("=")[1])
            assert shown_v == v                      # the chain continues from the (possibly corrupted) value
            true = (v + b) % 10 if op == "+" else (v - b) % 10 if op == "-" else (v * b) % 10
            wrong += result != true
            total += 1
            v = result
    assert abs(wrong / total - 0.2) < 0.015


def test_refuses_impossible_split_sizes():
    with pytest.raises(ValueError, match="distinct problems"):
        T(T.Config(modulus=3, ops="+", min_ops=1, max_ops=1, n_train=200, n_validation=1, n_test=1))
