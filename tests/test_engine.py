"""The HF engine: ragged batches, left padding and row compaction give the same tokens as transformers' generate."""
import pytest
import torch

from harness.runtime.engines.hf import HFEngine, sample_tokens
from harness.runtime.models import tiny_llama


def engine(char_tok, chunk=1024):
    torch.manual_seed(0)
    m = tiny_llama(char_tok, hidden_size=32, layers=1, heads=2, intermediate_size=64, seed=3)
    m.config._attn_implementation = "eager"
    return HFEngine(m, char_tok, chunk_size=chunk, progress=False)


PROMPTS = ["1a+2=", "7a*3b-1c+4=", "12", "9a-9b-9c-9d-9e-9="]


def test_greedy_matches_transformers_generate(char_tok):
    eng = engine(char_tok)
    prompts = [eng.encode_prompt(p) for p in PROMPTS]
    ours = eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=12)
    for p, s in zip(prompts, ours):
        ref = eng.model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=12, do_sample=False, eos_token_id=char_tok.eos_token_id)
        assert s.token_ids == ref[0, len(p):].tolist()
        assert s.text == char_tok.decode(s.token_ids, skip_special_tokens=True)


def test_decoding_attention_is_the_engines_and_training_keeps_the_models(char_tok, monkeypatch):
    """engine.attn_implementation: eager while decoding an sdpa model gives the same greedy tokens as sdpa, and the
    model is back on sdpa afterwards (training passes), also when generation fails."""
    eng = engine(char_tok)
    eng.model.set_attn_implementation("sdpa")
    prompts = [eng.encode_prompt(p) for p in PROMPTS]
    plain = eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=12)
    seen = []
    real = eng._decode_chunk
    monkeypatch.setattr(eng, "_decode_chunk", lambda *a: seen.append(eng.model.config._attn_implementation)
                        or real(*a))
    eng.attn = "eager"
    mixed = eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=12)
    assert seen == ["eager"] and eng.model.config._attn_implementation == "sdpa"
    assert eng.model.model.layers[0].self_attn.config._attn_implementation == "sdpa"
    assert [x.token_ids for x in mixed] == [x.token_ids for x in plain]
    monkeypatch.setattr(eng, "_decode_chunk", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=12)
    assert eng.model.config._attn_implementation == "sdpa"


def test_shared_prefix_prefill_matches_separate_generation(char_tok):
    eng = engine(char_tok, chunk=5)
    base = eng.encode_prompt("3a+4b*2=")
    prompts = [base, base + char_tok("7", add_special_tokens=False)["input_ids"],
               base + char_tok("7;7b", add_special_tokens=False)["input_ids"], eng.encode_prompt("9a-1="),
               base + char_tok("5", add_special_tokens=False)["input_ids"], base]
    leaves, leaf_of = eng._roots(prompts)
    assert sorted(prompts[i] for i in leaves) == sorted([prompts[2], prompts[3], prompts[4]])
    for p, k in zip(prompts, leaf_of):
        assert prompts[leaves[k]][:len(p)] == p
    shared = eng.generate(prompts, n=2, temperature=0.0, max_new_tokens=10)
    for i, p in enumerate(prompts):
        alone = eng.generate([p], n=1, temperature=0.0, max_new_tokens=10)[0]
        assert shared[2 * i].token_ids == alone.token_ids == shared[2 * i + 1].token_ids


def test_order_counts_budgets_and_seeds(char_tok):
    eng = engine(char_tok, chunk=3)                      # several chunks
    prompts = [eng.encode_prompt(p) for p in PROMPTS]
    out = eng.generate(prompts, n=3, temperature=1.0, max_new_tokens=[5, 1, 0, 9], seed=1)
    assert [s.prompt_index for s in out] == [i for i in range(4) for _ in range(3)]
    for s in out:
        assert len(s.token_ids) <= [5, 1, 0, 9][s.prompt_index]
        assert s.finished == (bool(s.token_ids) and s.token_ids[-1] == char_tok.eos_token_id)
    again = eng.generate(prompts, n=3, temperature=1.0, max_new_tokens=[5, 1, 0, 9], seed=1)
    other = eng.generate(prompts, n=3, temperature=1.0, max_new_tokens=[5, 1, 0, 9], seed=2)
    assert [s.token_ids for s in out] == [s.token_ids for s in again]
    assert [s.token_ids for s in out] != [s.token_ids for s in other]
    st = eng.stats.pop()
    assert st.new_tokens["generate"] == sum(len(s.token_ids) for s in out + again + other)
    assert eng.stats.new_tokens == {}


def test_stop_strings_cut_text_and_close_with_eos(char_tok):
    eng = engine(char_tok)
    prompts = [eng.encode_prompt(p) for p in PROMPTS]
    free = eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=20)
    s0 = free[3].text
    stop = s0[4:6]                                       # a string the greedy continuation is known to produce
    cut = eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=20, stop=(stop,))[3]
    assert cut.finished and cut.text == s0[:s0.find(stop)]
    assert cut.token_ids[-1] == char_tok.eos_token_id
    assert char_tok.decode(cut.token_ids[:-1]) == cut.text


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    s = sample_tokens(logits, 1.0, 0.7, g)
    assert set(s.tolist()) == {0, 1}                     # 0.5 + 0.3 reaches 0.7: tokens 2, 3 are cut
    frac0 = (s == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.04
    assert set(sample_tokens(logits, 1.0, 0.4, g).tolist()) == {0}
    assert sample_tokens(logits[:1], 0.0, 1.0, g).item() == 0


def exact_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution sample_tokens must draw from, written the slow way: sort, cut to the nucleus, renormalize."""
    p = torch.softmax(logits.double() / temperature, -1)
    sp, si = p.sort(descending=True)
    keep = sp.cumsum(-1) - sp < top_p
    out = torch.zeros_like(p)
    out[si[keep]] = sp[keep]
    return out / out.sum()


@pytest.mark.parametrize("temperature,top_p,nucleus_k", [
    (1.0, 1.0, 256),        # plain sampling: inverse CDF over the whole vocabulary
    (0.7, 0.8, 256),        # the nucleus lies inside the top-k
    (1.0, 0.95, 3),         # it does not: those rows take the full sort
])
def test_sampler_draws_the_exact_distribution(temperature, top_p, nucleus_k):
    """Chi-square goodness of fit of 40000 draws against the exact probabilities (16 tokens, fixed seed), and no
    draw outside the nucleus."""
    logits = torch.linspace(3.0, -3.0, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    n = 40000
    s = sample_tokens(logits.repeat(n, 1), temperature, top_p, torch.Generator().manual_seed(0), nucleus_k=nucleus_k)
    p = exact_probs(logits, temperature, top_p)
    counts = torch.bincount(s, minlength=16).double()
    assert counts[p == 0].sum() == 0
    support = p > 0
    chi2 = float(((counts[support] - n * p[support]) ** 2 / (n * p[support])).sum())
    dof = int(support.sum()) - 1
    # Wilson-Hilferty: the chi-square quantile at 1 - 1e-4 (z = 3.72)
    crit = dof * (1 - 2 / (9 * dof) + 3.72 * (2 / (9 * dof)) ** 0.5) ** 3
    assert chi2 < crit, (chi2, crit, dof)


def test_an_engine_holding_its_own_copy_refuses_to_sample_stale_weights(char_tok):
    """Engines know which weights they hold: after an optimizer step (or a reset) and no sync, an engine with its own
    copy raises instead of sampling the old policy; after sync() it samples again. The engine on the training model
    itself never is stale."""
    from harness.runtime.backends import TorchTrainer
    from harness.config import TrainConfig
    from harness.runtime.models import StaleWeights, bump_weights_version, frozen_copy
    policy = tiny_llama(char_tok, hidden_size=32, layers=1, heads=2, intermediate_size=64, seed=3)
    own, plain = HFEngine(frozen_copy(policy), char_tok, progress=False, source=policy), HFEngine(policy, char_tok,
                                                                                                   progress=False)
    prompts = [own.encode_prompt(p) for p in PROMPTS]
    own.generate(prompts, n=1, temperature=0.0, max_new_tokens=4)
    tr = TorchTrainer(policy, 1e-2, 10, TrainConfig())
    tr.backward(policy(input_ids=torch.tensor([prompts[1]])).logits.square().mean())
    tr.step()
    with pytest.raises(StaleWeights, match="weights of version 0, but the policy is at version 1"):
        own.generate(prompts, n=1, temperature=0.0, max_new_tokens=4)
    plain.generate(prompts, n=1, temperature=0.0, max_new_tokens=4)              # samples the model it trains
    own.sync(policy)
    synced = own.generate(prompts, n=1, temperature=0.0, max_new_tokens=4)
    assert [s.token_ids for s in synced] == [s.token_ids for s in plain.generate(prompts, n=1, temperature=0.0,
                                                                                  max_new_tokens=4)]
    bump_weights_version(policy)                                                   # e.g. RestEM's reset
    with pytest.raises(StaleWeights):
        own.generate(prompts, n=1, temperature=0.0, max_new_tokens=4)
