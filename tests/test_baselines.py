"""DPO+, RestEM, GRPO and RLOO as the algorithms use them: pair construction, filtering, reset-to-start, checkpoint
selection, the advantage column, whitening, step plans, learning-rate schedules and resume, on small exact inputs.
Models and tokenizers are real (a tiny Llama, the char tokenizer); the engine is scripted so that which samples are
correct, and what validation accuracy each checkpoint gets, is known exactly."""
import copy
import random
from dataclasses import replace

import pytest
import torch

import algorithms
from algorithms.dpo import make_pairs
from algorithms.onpolicy import Rollouts
from algorithms.restem import Kept, keep_correct
from harness.config import ConfigError, RunConfig, load_sweep
from harness.runtime.engines.hf import EngineStats, Sample
from harness.runtime.models import tiny_llama
from harness.tasks import get

# --- pure helpers -------------------------------------------------------------------------------------------------


def test_make_pairs_counts_skips_and_caps():
    #         problem 0: 2 correct x 2 wrong | 1: all correct | 2: all wrong | 3: 1 correct x 3 wrong
    rewards = [1, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    groups = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    pairs = make_pairs(rewards, groups, max_pairs=64, rng=random.Random(0))
    assert pairs == [(0, 1), (0, 3), (2, 1), (2, 3), (9, 8), (9, 10), (9, 11)]
    capped = make_pairs(rewards, groups, max_pairs=2, rng=random.Random(0))
    assert len(capped) == 4 and set(capped) <= set(pairs)
    assert sum(p[0] in (0, 2) for p in capped) == 2 and sum(p[0] == 9 for p in capped) == 2
    assert capped == make_pairs(rewards, groups, 2, random.Random(0))           # deterministic given the seed
    draws = {tuple(make_pairs(rewards, groups, 2, random.Random(s))) for s in range(20)}
    assert len(draws) > 1                                                        # ... and a real random subset
    # the paper's numbers: 64 samples, 32 correct -> 32 x 32 = 1024 candidate pairs, 64 kept
    big = make_pairs([1.0] * 32 + [0.0] * 32, [7] * 64, 64, random.Random(1))
    assert len(big) == 64 == len(set(big)) and all(w < 32 <= l for w, l in big)
    assert make_pairs([0.5, 0.4], [0, 0], 64, random.Random(0)) == [(0, 1)]    # "correct" means reward >= 0.5


def test_keep_correct_filters_and_caps_per_problem():
    rewards = [1.0] * 12 + [0.0, 1.0, 0.0, 0.5]
    groups = [0] * 12 + [1, 1, 2, 2]
    keep = keep_correct(rewards, groups, 10, random.Random(0))
    assert len([i for i in keep if i < 12]) == 10 and 13 in keep          # capped at 10; problem 1's one correct
    assert not {12, 14, 15} & set(keep)                                    # incorrect (and partial) dropped
    assert keep == sorted(keep) == keep_correct(rewards, groups, 10, random.Random(0))
    assert keep_correct([0.0, 0.0], [0, 1], 10, random.Random(0)) == []


# --- a scripted engine on the real task ---------------------------------------------------------------------------

class ScriptedEngine:
    """generate(): sample j of a training prompt is correct iff correct(prompt_text, j); tag "restem_select"
    returns, per call, the next accuracy of `select_accs` (a fraction of samples correct). Records every call."""

    def __init__(self, tok, task, correct=lambda q, j: j % 2 == 0, select_accs=()):
        self.tokenizer, self.correct, self.select_accs, self.calls = tok, correct, list(select_accs), []
        self.stats = EngineStats()
        self.answers = {p["question"]: p["answer"] for s in ("train", "validation", "test") for p in task.problems(s)}

    def encode_prompt(self, text):
        return [self.tokenizer.bos_token_id] + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def sync(self, model):          # samples from the training model itself: nothing to copy
        pass

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=64, stop=(), seed=0, tag="generate"):
        self.calls.append((tag, len(prompts), n, seed))
        self.stats.seconds[tag] += 0.25
        good = round(self.select_accs.pop(0) * len(prompts) * n) if tag == "restem_select" else None
        out = []
        for i, p in enumerate(prompts):
            q = self.tokenizer.decode(p[1:], skip_special_tokens=True)
            for j in range(n):
                ok = (i * n + j < good) if good is not None else self.correct(q, j)
                text = f"#{self.answers[q]}" if ok else f"#{(int(self.answers[q]) + 1) % 10}"
                if good is None and j == 3:         # ran out of budget with the right answer as text: scores 0
                    text = f"#{self.answers[q]}"
                    out.append(Sample(i, self.tokenizer(text, add_special_tokens=False)["input_ids"], text, False))
                    continue
                out.append(Sample(i, self.tokenizer(text, add_special_tokens=False)["input_ids"]
                                  + [self.tokenizer.eos_token_id], text, True))
        return out


def build(name, tok, engine_kw=None, **over):
    T = get("arithmetic")
    task = T(T.Config(n_train=50, n_validation=4, n_test=4, min_ops=1, max_ops=2))
    raw = {"algorithm": name, "model": {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32},
           "train": {"prompts_per_iteration": 4, "samples_per_prompt": 4, "batch_size": 4, "micro_batch_size": 4,
                     "epochs": 1, "iterations": 3, "lr": 1e-3, "precision": "fp32", "kl_coef": 0.0,
                     "schedule": "linear", "warmup_ratio": 0.0},
           "eval": {"samples": 2}}
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = RunConfig.model_validate(raw)
    engine = ScriptedEngine(tok, task, **(engine_kw or {}))
    policy = tiny_llama(tok, 16, 1, 2, 32, seed=0)
    return algorithms.get(name)(cfg, policy, tok, engine, task), engine


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# --- GRPO / RLOO ----------------------------------------------------------------------------------------------------

def hand_batch(algo, tok, rewards, groups, lengths):
    prompt = algo.engine.encode_prompt("1a+2=")
    samples = [Sample(g, [tok.convert_tokens_to_ids("#")] * (n - 1) + [tok.eos_token_id], "#" * (n - 1), True)
               for g, n in zip(groups, lengths)]
    batch = Rollouts(**vars(algo.pad([prompt] * len(samples), [s.token_ids for s in samples])), samples=samples,
                     problems=[{"question": "1a+2=", "answer": "3"}] * (max(groups) + 1),
                     prompts=[prompt] * (max(groups) + 1), iteration=0, rewards=torch.tensor(rewards),
                     groups=torch.tensor(groups))
    return batch, len(prompt)


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_advantage_column_on_a_hand_built_batch(name, char_tok):
    algo, _ = build(name, char_tok)
    rewards, groups, lengths = [1., 0., 0., 0., 1., 1., 0., 1.], [0, 0, 0, 0, 1, 1, 1, 1], [2, 4, 3, 4, 2, 2, 5, 1]
    batch, plen = hand_batch(algo, char_tok, rewards, groups, lengths)
    adv = algo.advantages(batch).adv
    if name == "grpo":   # group 0: mean .25, unbiased std .5; group 1: mean .75, std .5 (eps 1e-4)
        per_seq = [(1 - .25) / .5001, -.25 / .5001, -.25 / .5001, -.25 / .5001,
                   .25 / .5001, .25 / .5001, -.75 / .5001, .25 / .5001]
    else:                # r_i minus the mean of the other three of its group
        per_seq = [1., -1 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -1., 1 / 3]
    for b, (a, n) in enumerate(zip(per_seq, lengths)):
        row = adv[b].tolist()
        assert row[plen - 1:plen - 1 + n] == pytest.approx([a] * n, abs=1e-6)      # every response token
        assert all(v == 0 for v in row[:plen - 1] + row[plen - 1 + n:])              # nothing else


@pytest.mark.parametrize("name", ["ppo", "grpo", "rloo"])
def test_advantages_return_what_collect_stores_and_leave_the_batch_alone(name, char_tok):
    algo, _ = build(name, char_tok, train={"kl_coef": 0.1})
    batch = algo.collect(0)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else list(v) if isinstance(v, list) else v
              for k, v in vars(batch).items()}
    a = algo.advantages(batch)
    assert all(torch.equal(v, getattr(batch, k)) if isinstance(v, torch.Tensor) else v == getattr(batch, k)
               for k, v in before.items())
    assert batch.advantages is before["advantages"] and type(a) is type(batch.advantages)
    assert torch.equal(a.adv * batch.mask, batch.advantages.adv)
    if name == "ppo":                        # the critic's targets travel with the advantages, not in the batch
        assert torch.equal(a.old_values, batch.advantages.old_values)
        assert torch.equal(a.returns, batch.advantages.returns)


def test_the_first_minibatch_takes_its_old_log_probs_from_its_own_training_pass(char_tok, monkeypatch):
    """collect runs the old-log-prob pass only on the rows outside the first minibatch (that one trains on the weights
    that sampled it); after the update every row holds the pre-update policy's log-probs, and the first minibatch's
    ratio is exactly 1 while later minibatches' is not."""
    import algorithms.onpolicy as onpolicy
    algo, _ = build("grpo", char_tok, train={"batch_size": 8, "micro_batch_size": 4, "epochs": 2, "kl_coef": 0.1})
    ratios, real = [], onpolicy.clipped_surrogate

    def spy(*a):
        out = real(*a)
        ratios.append(float(out[1]["ratio"].detach()))
        return out
    monkeypatch.setattr(onpolicy, "clipped_surrogate", spy)
    batch = algo.collect(0)
    full = algo.logprobs_batched(copy.deepcopy(algo.policy), batch, algo.temperature)
    mask, first = batch.mask, batch.own_old_rows
    rest = torch.tensor([i for i in range(len(mask)) if i not in first.tolist()])
    assert len(first) == 8 and (batch.old_logp[first] == 0).all()                # not computed in collect
    assert torch.equal(batch.old_logp[rest], full[rest])
    before = params(algo.policy)
    algo.update(batch)
    assert not same(before, params(algo.policy))
    assert torch.allclose(batch.old_logp * mask, full * mask, atol=1e-5)          # as one full pass before
    assert len(ratios) == 8 and ratios[:2] == [1.0, 1.0]                          # 2 epochs x 2 minibatches x 2
    assert all(abs(r - 1) > 1e-7 for r in ratios[2:])


@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_length_grouped_trimmed_micro_batches_give_the_one_micro_batch_update(name, char_tok):
    """Micro-batches of rows of similar length, each trimmed to its longest row, sum to the same update as the whole
    minibatch in one padded pass (policy and critic), and a trimmed pass's log-probs are the padded pass's."""
    from algorithms.base import trim
    runs = {}
    for mb in (16, 3):
        algo, _ = build(name, char_tok, train={"batch_size": 16, "micro_batch_size": mb, "kl_coef": 0.1})
        batch = algo.collect(0)
        lengths = batch.attention_mask.sum(-1)
        assert len(set(lengths.tolist())) > 2                                      # rows of several lengths
        if mb == 3:
            chunks = [r for r, _ in algo.micro_batches(torch.arange(16), lengths)]
            assert [len(r) for r in chunks] == [3, 3, 3, 3, 3, 1]
            assert all(lengths[a].min() >= lengths[b].max() for a, b in zip(chunks, chunks[1:]))   # longest first
            assert trim(batch, chunks[-1])[0].shape[1] < batch.input_ids.shape[1]                  # trimmed
            lp = algo.logprobs(algo.policy, batch, 1.0, chunks[-1])
            wide = replace(batch, input_ids=torch.nn.functional.pad(batch.input_ids, (0, 5)),
                           attention_mask=torch.nn.functional.pad(batch.attention_mask, (0, 5)))
            full = algo.logprobs(algo.policy, wide, 1.0, chunks[-1])[:, :lp.shape[1]]
            m = batch.mask[chunks[-1]]
            assert lp.shape == m.shape and torch.allclose(lp * m, full * m, atol=1e-5)
        algo.update(batch)
        runs[mb] = params(algo.policy) + (params(algo.critic) if name == "ppo" else [])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(runs[16], runs[3]))
    assert not same(runs[16], params(build(name, char_tok)[0].policy))                 # it did train


@pytest.mark.parametrize("name,whiten_cfg,whitened", [("grpo", None, False), ("rloo", None, False),
                                                      ("grpo", True, True), ("rloo", True, True)])
def test_whitening_default_per_algorithm(name, whiten_cfg, whitened, char_tok):
    # With old log-probs from the policy itself the ratio is 1 and the surrogate loss is minus the token mean of
    # the advantages the update used: exactly 0 after whitening, the raw column's token mean otherwise.
    algo, _ = build(name, char_tok, train={"whiten_advantages": whiten_cfg, "batch_size": 8, "micro_batch_size": 8})
    batch, _ = hand_batch(algo, char_tok, [1., 0., 0., 0.], [0, 0, 0, 0], [2, 4, 4, 4])
    batch.old_logp = algo.logprobs_batched(algo.policy, batch, algo.temperature)
    batch.advantages = algo.advantages(batch)
    raw_mean = float(batch.advantages.adv.sum() / batch.mask.sum())   # GRPO: (1.5*2 - .5*12) / 14 (eps aside)
    assert abs(raw_mean) > 0.1
    out = algo.update(batch)
    assert out["pg_loss"] == pytest.approx(0.0 if whitened else -raw_mean, abs=1e-5)
    assert algorithms.get("ppo").whiten_default and algorithms.get("vineppo").whiten_default


@pytest.mark.parametrize("name", ["grpo", "rloo", "dpo"])
def test_group_methods_reject_one_sample_per_prompt_before_running(name, tmp_path):
    (tmp_path / "s.yaml").write_text(f"name: t\ngroups:\n  - name: g\n    set: {{algorithm: {name}, "
                                     f"train.samples_per_prompt: 1}}\n")
    with pytest.raises(ConfigError) as e:
        load_sweep(tmp_path / "s.yaml")
    assert "s.yaml" in str(e.value) and "train.samples_per_prompt must be >= 2 (got 1)" in str(e.value)


def test_restem_refuses_the_deepspeed_backend_before_running(tmp_path):
    (tmp_path / "s.yaml").write_text("name: t\ngroups:\n  - name: g\n    set: {algorithm: restem, "
                                     "backend: {name: deepspeed}}\n")
    with pytest.raises(ConfigError) as e:
        load_sweep(tmp_path / "s.yaml")
    assert "s.yaml" in str(e.value) and "backend torch with one process only" in str(e.value)
    assert "backend.name 'deepspeed'" in str(e.value)


# --- DPO+ -----------------------------------------------------------------------------------------------------------

def test_dpo_pairs_plan_schedule_and_counts(char_tok):
    # 4 problems x 4 samples: samples 0, 2 correct, 1 wrong, 3 unfinished -> 2 x 2 = 4 pairs per problem, 16 pairs;
    # batch 4 pairs, 2 epochs -> 8 steps over 3 iterations: 2, 3, 3.
    algo, eng = build("dpo", char_tok, train={"epochs": 2}, algo={"beta": 0.1})
    assert algo.total_steps() == 0 and algo.trainer is None and not algo.trainers
    before = params(algo.policy)
    b0 = algo.collect(0)
    assert eng.calls == [("generate", 4, 4, algo.seed(0, "generate"))]
    assert b0.info["pairs"] == 16 and b0.info["pair_problems"] == 4 and b0.info["train_reward"] == 0.5
    assert algo.total_steps() == 8 and list(b0.steps) == [0, 1]
    assert len(algo.data["responses"]) == 16 and len(algo.data["ref"]) == 16
    w, l = algo.data["pairs"][0].tolist()
    assert algo.data["responses"][w][-1] == char_tok.eos_token_id
    out = algo.update(b0)
    assert algo.counts["grad_steps"] == 2 and algo.counts["train_tokens"] > 0 and algo.counts["forward_tokens"] > 0
    assert 0 < out["loss"] and 0 <= out["pref_acc"] <= 1 and not same(before, params(algo.policy))
    steps = [list(algo.collect(i).steps) for i in (1, 2)]
    assert steps == [[2, 3, 4], [5, 6, 7]]
    assert sorted(torch.cat([algo.step_rows(s) for s in range(4)]).tolist()) == list(range(16))  # epoch 0
    for i in (1, 2):
        algo.update(algo.collect(i))
    assert algo.counts["grad_steps"] == 8 and algo.trainer.lr == 0.0     # linear decay ends at 0


def test_dpo_resume_continues_on_identical_data(char_tok, tmp_path):
    a, _ = build("dpo", char_tok)
    a.update(a.collect(0))
    sd = copy.deepcopy(a.state_dict())                  # what the run loop saves: latest.pt ...
    a.trainers["policy"].save(tmp_path / "policy")     # ... and each trainer's state
    a.update(a.collect(1))
    b, eng_b = build("dpo", char_tok)
    b.load_state_dict(sd)
    b.trainers["policy"].load(tmp_path / "policy")
    b.update(b.collect(1))
    assert eng_b.calls == []                                          # no sampling again after a resume
    assert same(params(a.policy), params(b.policy)) and a.counts == b.counts
    assert a.trainer.opt.state_dict()["state"][0]["step"] == b.trainer.opt.state_dict()["state"][0]["step"]


# --- RestEM ---------------------------------------------------------------------------------------------------------

def restem_batch(algo, correct_rows):
    """A collect() result whose kept solutions are given directly (to feed the same data to two instances)."""
    prompt = algo.engine.encode_prompt("1a+2=")
    texts = [f"3;#{r}" for r in correct_rows]
    return Kept(0, algo.pad([prompt] * len(texts), [algo.encode(t) + [algo.tokenizer.eos_token_id] for t in texts]),
                info={})


def test_restem_collect_keeps_only_correct_finished_samples(char_tok):
    # per problem: samples 0, 2 correct; 1 wrong; 3 unfinished (its text has the right answer, but it scores 0)
    algo, eng = build("restem", char_tok)
    b = algo.collect(0)
    assert eng.calls == [("generate", 4, 4, algo.seed(0, "generate"))]
    assert b.info["train_reward"] == 0.5 and b.kept == 8 and b.info["kept_problems"] == 4
    resp = [char_tok.decode(r[m.bool()].tolist()) for r, m in zip(b.solutions.input_ids[:, 1:], b.solutions.mask)]
    assert all(r.endswith("<eos>") for r in resp)                         # finished ones only
    answers = [eng.answers[char_tok.decode(r[1:m.bool().nonzero()[0, 0] + 1].tolist())] for r, m in
               zip(b.solutions.input_ids, b.solutions.mask)]
    assert [r.removesuffix("<eos>") for r in resp] == [f"#{a}" for a in answers]   # and correct ones only
    capped, _ = build("restem", char_tok, algo={"max_per_problem": 1})
    assert capped.collect(0).kept == 4


def test_restem_every_iteration_starts_from_the_starting_checkpoint(char_tok):
    algo, _ = build("restem", char_tok, algo={"select": False}, train={"epochs": 2})
    start = params(algo.policy)
    at_epoch1, train_epoch = [], algo.train_epoch

    def spy(batch, epoch):                              # the weights each iteration's fine-tune starts from
        if epoch == 1:
            at_epoch1.append(params(algo.policy))
        return train_epoch(batch, epoch)
    algo.train_epoch = spy
    b0, b1 = restem_batch(algo, [1, 2, 3, 4, 5]), restem_batch(algo, [7, 8, 9])
    b1.iteration = 1
    out0 = algo.update(b0)
    assert not same(start, params(algo.policy)) and out0["chosen_epoch"] == 2 and out0["epochs_trained"] == 2
    algo.update(b1)
    assert len(at_epoch1) == 2 and all(same(start, p) for p in at_epoch1)
    assert algo.counts["grad_steps"] == 2 * 2 + 1 * 2 and algo.trainer is None and not algo.trainers
    # the result of iteration 1 depends only on its own data, not on what iteration 0 trained
    fresh, _ = build("restem", char_tok, algo={"select": False}, train={"epochs": 2})
    fresh.update(b1)
    assert same(params(fresh.policy), params(algo.policy))


@pytest.mark.parametrize("accs,chosen,trained", [((.5, .625, .75, .75), 2, 3),   # a tie is not an improvement
                                                 ((.5, .625, .5), 1, 2),         # goes back to epoch 1
                                                 ((.5, .5), 0, 1),               # no gain: the starting point
                                                 ((.5, .625, .75, .875), 3, 3)])  # improves to the end
def test_restem_picks_the_last_epoch_before_validation_accuracy_drops(accs, chosen, trained, char_tok):
    # validation: 4 problems x 2 samples, so the scripted accuracies are multiples of 1/8; accs[0] is the start's
    const = {"schedule": "constant"}                   # so that the reference run's first epochs are the same steps
    algo, eng = build("restem", char_tok, train={"epochs": 3, **const}, engine_kw={"select_accs": accs})
    ref, _ = build("restem", char_tok, train={"epochs": max(chosen, 1), **const}, algo={"select": False})
    ref.update(restem_batch(ref, [1, 2, 3, 4, 5]))
    b = restem_batch(algo, [1, 2, 3, 4, 5])
    out = algo.update(b)
    assert (out["chosen_epoch"], out["epochs_trained"]) == (chosen, trained)
    assert [c[0] for c in eng.calls] == ["restem_select"] * (trained + 1)       # start + one per trained epoch
    assert out["select_acc"] == accs[chosen] and out["start_acc"] == accs[0]
    if chosen:
        assert same(params(algo.policy), params(ref.policy))                     # the chosen epoch's weights
    else:
        assert all(torch.equal(algo.policy.state_dict()[k], v) for k, v in algo.start.items())
    # the starting checkpoint's accuracy is measured once per run, not once per iteration
    eng.select_accs = [.625, .5]
    b.iteration = 1
    assert algo.update(b)["chosen_epoch"] == 1
    assert [c[0] for c in eng.calls].count("restem_select") == trained + 1 + 2


def test_restem_selects_on_the_weights_it_trained_with_an_engine_that_holds_a_copy(char_tok, monkeypatch):
    """With vLLM (or ZeRO-3) the engine holds its own copy of the weights: every selection evaluation must see the
    epoch it scores, so the engine is synced before it (here a real HF engine on a separate copy)."""
    import copy
    import algorithms.restem as restem
    from harness.runtime.engines.hf import HFEngine
    algo, _ = build("restem", char_tok, train={"epochs": 2})
    algo.engine = HFEngine(copy.deepcopy(algo.policy), char_tok, progress=False)
    seen = []

    def scored(engine, *a, **k):
        seen.append(same(params(engine.model), params(algo.policy)))
        return {"acc": 0.1 * len(seen)}                  # strictly improving: both epochs are scored
    monkeypatch.setattr(restem, "evaluate", scored)
    algo.update(restem_batch(algo, [1, 2, 3, 4, 5]))
    assert len(seen) == 3 and all(seen)                  # start, epoch 1, epoch 2: each on the current weights
