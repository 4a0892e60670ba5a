"""The value analysis (harness/analysis/values.py): the metrics on exact inputs, the states and the critic alignment against
what training used, and the ground-truth estimator on a hand-built stochastic environment with exactly known values."""
import math
import random
from functools import lru_cache

import pytest
import torch

import algorithms
from algorithms.onpolicy import Rollouts
from harness.core.seeding import derive_seed
from harness.analysis import values as analyze
from harness.analysis.values import mae, response_states, top1
from harness.config import RunConfig
from harness.runtime.engines.hf import Sample
from harness.runtime.models import tiny_llama
from harness.tasks import get
from test_vineppo import RESPONSE, build


# --- metrics ------------------------------------------------------------------------------------------------------
def test_mae_exact():
    assert mae([0.1, 0.5, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(0.2)
    assert math.isnan(mae([], []))


@pytest.mark.parametrize("pred, gt, expect", [
    ([0.9, 0.1, 0.2, 0.3, 0.0], [1, 0, 0, 0, 0], (1.0, 0.2)),          # right, unique maxima
    ([0.0, 1.0, 0.0, 0.0, 0.0], [1, 0, 0, 0, 0], (0.0, 0.2)),          # wrong
    ([1, 1, 0, 0, 0], [1, 0, 0, 0, 0], (0.5, 0.2)),                    # tied prediction: random pick among 2
    ([0, 1, 0, 0, 0], [0.5, 0.5, 0, 0, 0], (1.0, 0.4)),                # tied GT: either best counts
    ([1, 1, 1, 0, 0], [0.5, 0.5, 0, 0, 0.1], (2 / 3, 0.4)),            # both tied
    ([0.25, 0.25, 0.25], [0, 0, 0], (1.0, 1.0)),                       # all tied: nothing to rank
    ([1 / 3, 2 / 3, 1 / 3], [0.1, 0.2, 0.3], (0.0, 1 / 3)),            # 3 alternatives: baseline 1/3
])
def test_top1_with_ties(pred, gt, expect):
    assert top1(pred, gt) == pytest.approx(expect)


def test_pick_keeps_first_and_last():
    assert analyze.pick([0, 10, 20, 30, 40, 50, 60], 4) == [0, 20, 40, 60]
    assert analyze.pick([0, 10], 4) == [0, 10] and analyze.pick([0, 5, 9], None) == [0, 5, 9]


# --- states and alignment with training ---------------------------------------------------------------------------
@pytest.mark.parametrize("tok_name", ["char_tok", "bpe_tok"])
def test_states_are_vineppos_states(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    texts = [RESPONSE, "1a+1=2;2b+3=4;#4", "1a+1=3;#3"]
    algo, _, batch, _ = build(tok, texts)
    seen = []
    algo.mc_values = lambda requests, *a, **k: seen.extend(requests) or [0.5] * len(requests)
    algo.advantages(batch)
    ours = {(s.p, tuple(s.seq[:s.k]), s.text) for s in response_states(algo.task, tok, batch.samples)}
    assert ours == {(p, tuple(ids), text) for p, ids, text in seen}
    steps = [s.step for s in response_states(algo.task, tok, batch.samples[:1])]
    assert steps == [0, 1, 2]


def test_critic_read_where_gae_read_it(char_tok):
    T = get("arithmetic")
    task = T(T.Config(n_train=10, n_validation=1, n_test=1))
    cfg = RunConfig.model_validate({"algorithm": "ppo", "train": {"kl_coef": 0.0, "precision": "fp32"}})
    ppo = algorithms.get("ppo")(cfg, tiny_llama(char_tok, hidden_size=32, layers=1, heads=2, intermediate_size=64),
                                char_tok, None, task)
    prompt = [char_tok.bos_token_id] + char_tok("1a+1b+3=", add_special_tokens=False)["input_ids"]
    samples = [Sample(0, char_tok(t, add_special_tokens=False)["input_ids"] + [char_tok.eos_token_id], t, True)
               for t in (RESPONSE, "1a+1=3;3b+3=6;#6")]
    batch = Rollouts(**vars(ppo.pad([prompt] * 2, [s.token_ids for s in samples])), samples=samples, problems=[{}],
                     prompts=[prompt], iteration=0, rewards=torch.tensor([1.0, 0.0]), groups=torch.zeros(2).long())
    old_values = ppo.advantages(batch).old_values          # V(state before each response token)
    states = response_states(task, char_tok, samples)
    got = analyze.critic_values(ppo, states, [prompt])
    b_of = [0] * 3 + [1] * 3
    expect = [float(old_values[b, len(prompt) - 1 + s.k]) for b, s in zip(b_of, states)]
    assert got == pytest.approx(expect, abs=1e-6)
    # ... which is the critic's output at the state's last token, whatever follows it (causal)
    s = states[4]
    alone = ppo.critic(torch.tensor([prompt + s.seq[:s.k] + [0]]), torch.ones(1, len(prompt) + s.k + 1))
    assert got[4] == pytest.approx(float(alone[0, -1].detach()), abs=1e-5)


# --- the ground truth on a hand-built environment -----------------------------------------------------------------
OPS = [("+", 1), ("+", 3), ("*", 3)]          # "1a+1b+3c*3=": answer ((1+1)+3)*3 % 10 = 5
P_RIGHT = [0.7, 0.6, 0.9]                      # probability that the policy computes step i correctly


def apply(v, i):
    op, b = OPS[i]
    return (v + b) % 10 if op == "+" else (v * b) % 10


@lru_cache(None)
def true_value(i: int, v: int) -> float:
    """Exact V after i steps with current value v: a wrong step gives any of the 9 wrong digits uniformly."""
    if i == len(OPS):
        return float(v == 5)
    r = apply(v, i)
    return P_RIGHT[i] * true_value(i + 1, r) + (1 - P_RIGHT[i]) * sum(
        true_value(i + 1, (r + d) % 10) for d in range(1, 10)) / 9


def parse(prefix: str) -> tuple[int, int]:
    steps = [s for s in prefix.split(";") if s]
    return len(steps), (int(steps[-1].split("=")[1]) if steps else 1)


class ChainEngine:
    """The environment: from any step-boundary prefix, continues the chain with the probabilities above."""

    def __init__(self, tok, prompt_len):
        self.tokenizer, self.prompt_len, self.seeds = tok, prompt_len, []
        self.encode = lru_cache(None)(lambda text: tuple(tok(text, add_special_tokens=False)["input_ids"]))

    def encode_prompt(self, text):
        return [self.tokenizer.bos_token_id] + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=64, stop=(), seed=0, tag=""):
        self.seeds.append(seed)
        out = []
        for i, p in enumerate(prompts):
            i0, v0 = parse(self.tokenizer.decode(p[self.prompt_len:], skip_special_tokens=True))
            assert temperature == 1.0 and top_p == 1.0       # the run's training sampling parameters
            for j in range(n):
                rng, text, v = random.Random(derive_seed(seed, i, j)), "", v0
                for k in range(i0, len(OPS)):
                    r = apply(v, k)
                    if rng.random() >= P_RIGHT[k]:
                        r = (r + rng.randrange(1, 10)) % 10
                    text += f"{v}{'abc'[k]}{OPS[k][0]}{OPS[k][1]}={r};"
                    v = r
                text += f"#{v}"
                out.append(Sample(i, list(self.encode(text)) + [self.tokenizer.eos_token_id], text, True))
        return out


def chain_algo(tok, algorithm, K=3):
    T = get("arithmetic")
    task = T(T.Config(n_train=10, n_validation=1, n_test=1))
    task._splits["validation"] = [{"id": "v", "question": "1a+1b+3c*3=", "answer": "5"}]
    cfg = RunConfig.model_validate({"algorithm": algorithm, "algo": {"K": K}, "train": {"kl_coef": 0.0},
                                    "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64}})
    engine = ChainEngine(tok, 1 + len("1a+1b+3c*3="))
    return algorithms.get(algorithm)(cfg, tiny_llama(tok, hidden_size=32, layers=1, heads=2, intermediate_size=64),
                                     tok, engine, task), engine


def test_ground_truth_converges_to_the_known_values(char_tok):
    algo, engine = chain_algo(char_tok, "vineppo")
    prompts = [engine.encode_prompt("1a+1b+3c*3=")]
    problems = algo.task.problems("validation")
    samples = engine.generate(prompts, n=12, seed=1, tag="analysis")
    states = response_states(algo.task, char_tok, samples)
    truth = [true_value(*parse(s.text)) for s in states]
    assert len({round(t, 6) for t in truth}) >= 4            # states of different values, including wrong prefixes
    errors = {}
    for n in (16, 256, 2048):
        est = analyze.mc(algo, states, problems, prompts, 0, n, "analysis-gt")
        errors[n] = mae(est, truth)
        for e, t in zip(est, truth):                          # within 5 standard errors, every state
            assert abs(e - t) <= 5 * math.sqrt(t * (1 - t) / n) + 1e-9
    assert errors[2048] < errors[256] < errors[16] and errors[2048] < 0.012


def test_analyze_snapshot_end_to_end_on_known_values(char_tok):
    prm = {**analyze.DEFAULTS, "problems": 1, "samples": 6, "gt_rollouts": 2048, "ranking_states": 6, "draws": 64}
    algo, engine = chain_algo(char_tok, "vineppo", K=3)
    res = analyze.analyze_snapshot(algo, 10, prm)
    assert len(set(engine.seeds)) == len(engine.seeds)      # GT, estimate, responses, alternatives: own seeds
    assert res["n_states"] == 6 * len(OPS) + 6 and len(res["gt"]) == len(res["pred"]) == res["n_states"]
    assert res["step"][:len(OPS) + 1] == list(range(len(OPS) + 1))
    # K = 3 estimates are multiples of 1/3; the GT is close to the exact value
    assert all(abs(3 * p - round(3 * p)) < 1e-9 for p in res["pred"])
    assert res["mae"] == pytest.approx(mae(res["pred"], res["gt"]))
    # ranking: distinct non-final alternatives only; with 2048 rollouts the GT picks the right next step
    assert res["n_ranking_states"] >= 1
    n_right = 0
    for r in res["ranking"]:
        assert 3 <= len(r["gt"]) <= 5 and len(set(r["children"])) == len(r["children"])
        exact = [true_value(*parse(c)) for c in r["children"]]
        for g, t in zip(r["gt"], exact):
            assert abs(g - t) <= 5 * math.sqrt(t * (1 - t) / 2048) + 1e-9
        assert (r["top1"], r["random"]) == pytest.approx(top1(r["pred"], r["gt"]))
        n_right += top1(r["gt"], exact)[0] == 1.0
    assert n_right == len(res["ranking"])                     # the GT ranks like the exact values
