"""VinePPO's estimator on a hand-built tree: a scripted policy whose continuation from each state is correct with a
known probability, so V(s) is known exactly and the token advantages can be written down; and the reuse of
continuations (algo.reuse) against a consistent stochastic policy whose values are known in closed form."""
import random
from dataclasses import replace

import pytest
import torch

import algorithms
from algorithms.base import token_char_offsets
from algorithms.onpolicy import Rollouts
from algorithms.vineppo import step_cuts
from harness.config import RunConfig
from harness.runtime.engines.hf import Sample
from harness.runtime.models import tiny_llama
from harness.tasks import get

RESPONSE = "1a+1=2;2b+3=5;#5"                    # steps: "1a+1=2;" "2b+3=5;" "#5"
# V of each state (response prefix) under the scripted policy, with K = 4 rollouts
VALUES = {"": 0.5, "1a+1=2;": 0.25, "1a+1=2;2b+3=5;": 1.0, "1a+1=2;2b+3=4;": 0.0}


class ScriptedEngine:
    """Answers generate() from a value table: of K continuations of a state, round(V*K) end in the right answer."""

    def __init__(self, tok, prompt_len):
        self.tokenizer, self.prompt_len, self.calls = tok, prompt_len, []

    def encode_prompt(self, text):
        return [self.tokenizer.bos_token_id] + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seed, tag):
        self.calls.append((tag, len(prompts), n))
        self.budgets = max_new_tokens
        out = []
        for i, p in enumerate(prompts):
            prefix = self.tokenizer.decode(p[self.prompt_len:], skip_special_tokens=True)
            # With BPE a state can end inside a step (a token crossing the boundary belongs to the earlier step):
            # it is the state of the longest step prefix it extends.
            good = round(VALUES[max((k for k in VALUES if prefix.startswith(k)), key=len)] * n)
            for j in range(n):
                text = RESPONSE[len(prefix):] if j < good else "#4"
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                out.append(Sample(i, ids, text, True))
        return out


def build(tok, samples_texts, K=4, max_states=None, reuse=False, engine_cls=None, algo=None, train=None):
    T = get("arithmetic")
    task = T(T.Config(n_train=10, n_validation=1, n_test=1))
    cfg = RunConfig.model_validate({"algorithm": "vineppo",
                                    "algo": {"K": K, "max_states": max_states, "reuse": reuse, **(algo or {})},
                                    "train": {"kl_coef": 0.0, **(train or {})}})
    problem = {"id": "p", "question": "1a+1b+3=", "answer": "5"}
    prompt_ids = [tok.bos_token_id] + tok(problem["question"], add_special_tokens=False)["input_ids"]
    # The value-table engine is not a consistent policy (its rollouts from s0 all continue along RESPONSE), so the
    # exact tests above run without reuse; the reuse tests below use MarkovEngine.
    engine = (engine_cls or ScriptedEngine)(tok, len(prompt_ids))
    algo = algorithms.get("vineppo")(cfg, tiny_llama(tok), tok, engine, task)
    samples = []
    for text in samples_texts:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        samples.append(Sample(0, ids, text, True))
    rewards = [task.grade(s.text, "5") for s in samples]
    batch = Rollouts(**vars(algo.pad([prompt_ids] * len(samples), [s.token_ids for s in samples])), samples=samples,
                     problems=[problem], prompts=[prompt_ids], iteration=0, rewards=torch.tensor(rewards),
                     groups=torch.zeros(len(samples), dtype=torch.long))
    return algo, engine, batch, len(prompt_ids)


def token_advantages(adv, batch, row, prompt_len):
    return adv[row, prompt_len - 1:prompt_len - 1 + int(batch.mask[row].sum())].tolist()


@pytest.mark.parametrize("tok_name", ["char_tok", "bpe_tok"])
def test_step_advantages_on_tokens(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    algo, engine, batch, plen = build(tok, [RESPONSE, "1a+1=2;2b+3=4;#4"])
    adv = algo.advantages(batch).adv
    # correct response: A0 = V1 - V0 = -0.25, A1 = V2 - V1 = 0.75, A2 = R - V2 = 0
    expect_step = [-0.25, 0.75, 0.0]
    ids = batch.samples[0].token_ids
    offsets = token_char_offsets(tok, ids[:-1])
    bounds = [0, 7, 14]
    expect = [expect_step[max(i for i, b in enumerate(bounds) if b <= o)] for o in offsets] + [expect_step[-1]]
    assert token_advantages(adv, batch, 0, plen) == pytest.approx(expect)
    # the wrong response shares s0 and s1 with it; its s2 has V = 0: A = [-0.25, 0 - 0.25, R - 0 = 0]
    expect_wrong = [[-0.25, -0.25, 0.0][max(i for i, b in enumerate(bounds) if b <= o)]
                    for o in token_char_offsets(tok, batch.samples[1].token_ids[:-1])] + [0.0]
    assert token_advantages(adv, batch, 1, plen) == pytest.approx(expect_wrong)
    assert engine.calls == [("mc_rollouts", 4, 4)]     # s0, s1 shared: 4 unique states of 6


@pytest.mark.parametrize("tok_name", ["char_tok", "bpe_tok"])
def test_step_cuts(tok_name, request):
    """State s_i keeps the response tokens before the first token that starts at/after step i's first character."""
    tok = request.getfixturevalue(tok_name)
    algo, _, batch, _ = build(tok, [RESPONSE])
    x = batch.samples[0]
    body, offsets, cuts = step_cuts(algo.task, tok, x)
    assert body == x.token_ids[:-1] and offsets == token_char_offsets(tok, body)      # EOS is not part of a step
    assert cuts == [next(i for i, o in enumerate(offsets) if o >= b) for b in (0, 7, 14)]


def test_dedup_and_rollouts_never_trained_on(char_tok):
    algo, engine, batch, plen = build(char_tok, [RESPONSE, RESPONSE, RESPONSE])
    a = algo.advantages(batch)
    # three identical responses -> 3 unique states, rolled out once each with K = 4
    assert engine.calls == [("mc_rollouts", 3, 4)]
    assert a.states == 3 and a.state_refs == 9
    assert a.adv.shape == batch.mask.shape           # only the sampled responses carry advantages
    assert torch.equal(a.adv[0], a.adv[1])


def test_max_states_backfills_with_the_return(char_tok):
    algo, engine, batch, plen = build(char_tok, [RESPONSE], max_states=1)
    # only V(s0)=0.5 is estimated; V(s1)=V(s2)=R=1 back-filled: A0 = 1 - .5, A1 = A2 = 0
    adv = token_advantages(algo.advantages(batch).adv, batch, 0, plen)
    assert adv[:7] == pytest.approx([0.5] * 7) and adv[7:] == pytest.approx([0.0] * (len(adv) - 7))
    assert engine.calls == [("mc_rollouts", 1, 4)]


def test_max_states_counts_states_from_s0(char_tok):
    """max_states N estimates s_0 .. s_{N-1}: the authors' max_step_for_value_estimation M is max_states M + 1."""
    for n, states in ((1, 1), (2, 2), (3, 3), (None, 3)):
        algo, engine, batch, plen = build(char_tok, [RESPONSE], max_states=n)
        assert algo.advantages(batch).states == states


@pytest.mark.parametrize("mc_context", [None, 30, 18])
def test_rollout_budget(char_tok, mc_context):
    """Default: what the response had left (max_new_tokens - prefix); mc_context C: the authors'
    min(max_new_tokens, C - prompt - prefix), at least 1."""
    algo, engine, batch, plen = build(char_tok, [RESPONSE], algo={"mc_context": mc_context},
                                      train={"micro_batch_size": 64})
    algo.cfg.sampling.max_new_tokens = m = 20
    algo.advantages(batch)
    prefixes = [0, 7, 14]                                  # tokens of s_0, s_1, s_2 (characters = tokens)
    want = {None: [m - k for k in prefixes], 30: [min(m, 30 - plen - k) for k in prefixes],
            18: [max(1, 18 - plen - k) for k in prefixes]}[mc_context]
    assert engine.budgets == want
    assert mc_context is None or want != [m - k for k in prefixes]   # the case tells the rules apart


def test_reuse_is_refused_with_mc_context():
    with pytest.raises(ValueError, match="algo.reuse: true needs algo.mc_context: null"):
        RunConfig.model_validate({"algorithm": "vineppo", "algo": {"reuse": True, "mc_context": 2047},
                                  "task": {"name": "arithmetic"}})


@pytest.mark.parametrize("scope", ["batch", "minibatch"])
def test_whiten_scope(char_tok, scope):
    """batch: one mean/std over the iteration's tokens; minibatch: each optimizer minibatch's own (the authors')."""
    texts = [RESPONSE, "1a+1=2;2b+3=4;#4", "1a+1=3;#3", "1a+1=2;2b+3=5;#5"]
    algo, engine, batch, plen = build(char_tok, texts, train={"batch_size": 2, "micro_batch_size": 2,
                                                              "whiten_scope": scope, "epochs": 1})
    a = algo.advantages(batch)
    batch.advantages = replace(a, adv=(torch.randn(a.adv.shape, generator=torch.Generator().manual_seed(0)) * 3 + 1)
                               * batch.mask)
    seen = []
    algo.train_minibatch = lambda b, adv, rows: seen.append((adv.clone(), rows)) or {}
    algo.update(batch)
    mask, raw = batch.mask, batch.advantages.adv
    assert len(seen) == 2
    from algorithms.losses import masked_whiten
    for adv, rows in seen:
        want = (masked_whiten(raw[rows], mask[rows]) if scope == "minibatch"
                else masked_whiten(raw, mask)[rows])
        assert torch.allclose(adv[rows], want, atol=1e-6)
    a, rows = seen[0]
    m = mask[rows].bool()
    mean0 = float(a[rows][m].mean())
    assert (abs(mean0) < 1e-5) == (scope == "minibatch")


def test_offsets_on_bpe_cross_boundary_tokens(bpe_tok):
    ids = bpe_tok(RESPONSE, add_special_tokens=False)["input_ids"]
    offs = token_char_offsets(bpe_tok, ids)
    assert offs[0] == 0 and offs == sorted(offs) and len(ids) < len(RESPONSE)   # multi-char tokens
    pieces = [bpe_tok.decode([i]) for i in ids]
    assert all(RESPONSE[o:o + len(p)] == p for o, p in zip(offs, pieces))


class MarkovEngine:
    """A consistent stochastic policy for "1a+1b+3=" (answer 5): each remaining step's result is right with
    probability Q, else one more than right, and the chain continues from what was written; then "#<value>". So
    V(prefix) = Q ** (steps left) if every step so far is right, else 0."""
    Q, OPS = 0.7, (("a", 1), ("b", 3))

    def __init__(self, tok, prompt_len):
        self.tokenizer, self.prompt_len, self.rows = tok, prompt_len, 0

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seed, tag):
        rng, out = random.Random(seed), []
        for i, p in enumerate(prompts):
            prefix = self.tokenizer.decode(p[self.prompt_len:], skip_special_tokens=True)
            done = prefix.count(";")
            v = int(prefix[-2]) if done else 1
            for _ in range(n):
                text, w = "", v
                for label, x in self.OPS[done:]:
                    r = (w + x) % 10 if rng.random() < self.Q else (w + x + 1) % 10
                    text, w = text + f"{w}{label}+{x}={r};", r
                text += f"#{w}"
                out.append(Sample(i, self.tokenizer(text, add_special_tokens=False)["input_ids"]
                                  + [self.tokenizer.eos_token_id], text, True))
        self.rows += n * len(prompts)
        return out


def exact_value(prefix: str) -> float:
    right = {"": True, "1a+1=2;": True, "1a+1=2;2b+3=5;": True}
    return MarkovEngine.Q ** (2 - prefix.count(";")) if right.get(prefix, False) else 0.0


RESPONSES = [RESPONSE, "1a+1=3;3b+3=6;#6", "1a+1=2;2b+3=6;#6"]


@pytest.mark.parametrize("reuse", [False, True])
def test_reused_continuations_keep_the_estimate_unbiased(char_tok, reuse):
    """Averaged over many iterations (seeds), every state's estimate converges to its exact value, with reuse as
    without; with reuse each state still averages exactly K samples, and fewer rollouts are sampled."""
    K, n_iter = 3, 400
    algo, engine, batch, plen = build(char_tok, RESPONSES, K=K, reuse=reuse, engine_cls=MarkovEngine)
    prefixes = ["", "1a+1=2;", "1a+1=3;", "1a+1=2;2b+3=5;", "1a+1=3;3b+3=6;", "1a+1=2;2b+3=6;"]
    requests = [(0, char_tok(p, add_special_tokens=False)["input_ids"], p) for p in prefixes]
    parent = [None, 0, 0, 1, 2, 1]
    sums, fresh = [0.0] * len(prefixes), 0
    for it in range(n_iter):
        if reuse:
            values, n = algo.tree_values(requests, parent, batch.problems, batch.prompts, it)
            fresh += n
        else:
            values = algo.mc_values(requests, batch.problems, batch.prompts, it)
            fresh += K * len(prefixes)
        assert all(v * K == pytest.approx(round(v * K)) for v in values)       # means of exactly K 0/1 rewards
        sums = [a + v for a, v in zip(sums, values)]
    assert engine.rows == fresh
    for p, total in zip(prefixes, sums):
        # sd of one estimate <= 0.5 / sqrt(K): 4 standard errors of the mean over n_iter iterations
        assert total / n_iter == pytest.approx(exact_value(p), abs=4 * 0.5 / (K * n_iter) ** 0.5), p
    if reuse:
        # s1 inherits the ~Q*K rollouts of s0 that begin with its step, and so on down: far fewer than K per state
        assert fresh < 0.7 * K * len(prefixes) * n_iter


def test_reuse_through_advantages_counts_the_rollouts_sampled(char_tok):
    algo, engine, batch, plen = build(char_tok, RESPONSES, K=3, reuse=True, engine_cls=MarkovEngine)
    a = algo.advantages(batch)
    assert a.states == 6 and a.rollouts == engine.rows < 6 * 3
    assert algo.batch_metrics(replace(batch, advantages=a))["mc_rollouts"] == engine.rows


def test_reuse_is_refused_with_stop_strings():
    from harness.config import ConfigError, RunConfig  # noqa: F401
    with pytest.raises(ValueError, match="algo.reuse: true needs a task without stop strings"):
        RunConfig.model_validate({"algorithm": "vineppo", "algo": {"reuse": True},
                                  "task": {"name": "gsm8k"}})
