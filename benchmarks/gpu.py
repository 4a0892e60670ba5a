"""GPU benchmark on a ~1.1B-parameter Llama-shaped model with random weights (TinyLlama / Rho-1B shape: hidden 2048,
22 layers, 32 heads, 4 KV heads, MLP 5632, vocabulary 32000; nothing is downloaded).

    python benchmarks/gpu.py --quick             # < 3 min on one H100
    python benchmarks/gpu.py                     # < 9 min
    python benchmarks/gpu.py --size tiny --quick # CPU smoke test of every section (seconds)

Sections, each printed as rows of one table at the end:
  gen    VinePPO-shaped generation: responses (prompts x n), then MC rollouts (K per step-boundary state of every
         response, nested prefixes, budget = what the response had left): new tokens/s, HF engine and vLLM engine
  train  policy training step (bf16 autocast, fp32 AdamW; the harness's trainers): tokens/s and MFU =
         (6 N + 12 layers hidden seq) tokens/s / peak bf16 FLOP/s; torch backend, and DeepSpeed ZeRO-2 if installed
  iter   one PPO and one VinePPO iteration through the harness's own algorithms: seconds and where they go
Random weights never emit EOS, so every response and rollout runs to its budget (token counts are exact); a share of
the vocabulary decodes with a ';' so that responses have ~`steps` reasoning steps for VinePPO's MC states.

Packages: torch, transformers, tokenizers, numpy, pyyaml, tqdm. A section whose package is missing prints why and is
skipped: vLLM rows need vllm; DeepSpeed rows need deepspeed (+ hjson, pydantic); the iter section needs pydantic
(the harness's config). To run everything on a machine without them, carry these wheels (no other downloads):
pydantic, pydantic-core, annotated-types, typing-inspection; deepspeed (a pure-Python wheel: `pip wheel
deepspeed --no-deps`), hjson.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.runtime.backends import TorchTrainer  # noqa: E402
from harness.runtime.engines.hf import HFEngine  # noqa: E402
from harness.runtime.models import CHARS, SPECIALS  # noqa: E402

SIZES = {"1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                    intermediate_size=5632, vocab_size=32000),
         "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=512)}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}   # dense, no sparsity
#                 prompts x n, response tokens, K, steps/response | train micro x seq, steps | iteration config
PLANS = {"quick": dict(gen=(16, 4, 128, 3, 4), train=(8, 512, 3), it=(8, 4, 128, 3, 1)),
         "full": dict(gen=(16, 4, 256, 9, 4), train=(8, 1024, 6), it=(16, 4, 256, 9, 1))}


def tokenizer(vocab_size: int, step_rate: float):
    """Character tokenizer padded to `vocab_size` with filler tokens; a `step_rate` share of them decodes with a
    ';' (the arithmetic task's step separator), so random responses have steps."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    base = SPECIALS + CHARS
    every = max(1, round(1 / step_rate))
    fill = [f"<{i}>" + (";" if i % every == 0 else "") for i in range(vocab_size - len(base))]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(base + fill)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def model(size: str, tok, device):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg._attn_implementation = "sdpa" if device.type == "cuda" else "eager"
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(cfg)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_gen(engine, plan, vocab, name) -> list[dict]:
    P, n, R, K, steps = plan
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(200, vocab, (48,), generator=g).tolist() for _ in range(P)]
    engine.generate(prompts[:2], n=2, max_new_tokens=8, tag="warmup")           # kernels, allocator
    engine.stats.pop()
    resp = engine.generate(prompts, n=n, temperature=1.0, max_new_tokens=R, seed=1, tag="generate")
    every = max(1, R // steps)
    states = [(prompts[s.prompt_index] + s.token_ids[:k], R - k) for s in resp for k in range(0, len(s.token_ids),
                                                                                             every)]
    engine.generate([p for p, _ in states], n=K, temperature=1.0, max_new_tokens=[b for _, b in states], seed=2,
                    tag="mc_rollouts")
    st = engine.stats.pop()
    rows = []
    for tag, what in (("generate", f"{P}x{n} responses, {R} tok"), ("mc_rollouts", f"{len(states)} states x K={K}")):
        rows.append(dict(section="gen", engine=name, what=what, tokens=st.new_tokens[tag],
                         seconds=round(st.seconds[tag], 2), tok_s=round(st.new_tokens[tag] / st.seconds[tag])))
    return rows


def bench_train(trainer, policy, plan, vocab, device, name, n_params, peak) -> dict:
    B, L, steps = plan
    c = policy.config
    ids = torch.randint(200, vocab, (B, L), device=device)
    times = []
    for i in range(steps + 1):                                                   # step 0: warm-up
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = trainer.model(input_ids=ids, labels=ids).loss
        trainer.backward(loss)
        trainer.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times[1:])
    flops_tok = 6 * n_params + 12 * c.num_hidden_layers * c.hidden_size * L
    row = dict(section="train", engine=name, what=f"{B}x{L} tok/step", tokens=B * L, seconds=round(s, 3),
               tok_s=round(B * L / s))
    if peak:
        row["mfu"] = round(flops_tok * B * L / s / peak, 3)
    return row


def bench_iter(policy, tok, plan, algo, device) -> dict:
    import algorithms
    from harness import tasks
    from harness.config import RunConfig
    P, n, R, K, iters = plan
    cfg = RunConfig.model_validate(dict(
        algorithm=algo, task={"name": "arithmetic"}, progress=False,
        sampling=dict(temperature=1.0, top_p=1.0, max_new_tokens=R),
        train=dict(prompts_per_iteration=P, samples_per_prompt=n, epochs=2 if iters > 1 else 1, batch_size=P * n // 2,
                   micro_batch_size=16, iterations=100, precision="bf16" if device.type == "cuda" else "fp32"),
        algo={"K": K} if algo == "vineppo" else {}))
    task_cls = tasks.get(cfg.task["name"])
    task = task_cls(task_cls.Config(**cfg.task))
    engine = HFEngine(policy, tok, progress=False)
    a = algorithms.get(algo)(cfg, policy, tok, engine, task)
    rows = []
    for it in range(iters + 1):                                                  # iteration 0: warm-up
        sync(device)
        t0 = time.perf_counter()
        batch = a.collect(it)
        t1 = time.perf_counter()
        a.update(batch)
        sync(device)
        t2 = time.perf_counter()
        st = engine.stats.pop()
        rows.append(dict(total=t2 - t0, generate=st.seconds.get("generate", 0.0), mc=st.seconds.get("mc_rollouts", 0.0),
                         train=t2 - t1, tokens=sum(st.new_tokens.values())))
    m = {k: statistics.median(r[k] for r in rows[1:]) for k in rows[0]}
    del a, engine
    return dict(section="iter", engine="hf+torch", what=f"{algo} {P}x{n}, {R} tok" + (f", K={K}" if algo == "vineppo"
                                                                                   else ""),
                tokens=int(m["tokens"]), seconds=round(m["total"], 2),
                split=f"gen {m['generate']:.1f} mc {m['mc']:.1f} train {m['train']:.1f} "
                      f"other {m['total'] - m['generate'] - m['mc'] - m['train']:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller workloads (< 3 min on an H100)")
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--sections", default="gen,train,iter")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: from GPU name)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = PLANS["quick" if a.quick else "full"]
    if a.size == "tiny":                                                         # CPU smoke test: tiny workloads
        plan = dict(gen=(4, 2, 16, 2, 3), train=(2, 32, 2), it=(2, 2, 16, 2, 1))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = a.peak_tflops * 1e12 if a.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
    vocab = SIZES[a.size]["vocab_size"]
    steps = plan["gen"][4]
    tok = tokenizer(vocab, step_rate=steps / plan["gen"][2])
    policy = model(a.size, tok, device)
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"# {name}, torch {torch.__version__}, model {n_params / 1e9:.2f}B params ({a.size}), "
          f"{'quick' if a.quick else 'full'} plan", flush=True)
    rows, t_start = [], time.time()
    sections = a.sections.split(",")

    def note(section, why):
        rows.append(dict(section=section, engine="-", what=f"skipped: {why}"))
        print(f"[{section}] skipped: {why}", flush=True)

    if "gen" in sections:
        gen_model = policy.to(torch.bfloat16) if device.type == "cuda" else policy   # inference weights in bf16
        rows += bench_gen(HFEngine(gen_model, tok, progress=False), plan["gen"], vocab, "hf")
        print(rows[-2], rows[-1], sep="\n", flush=True)
        if importlib.util.find_spec("vllm") is None:
            note("gen", "vllm not installed (vLLM engine rows)")
        else:
            from harness.runtime.engines.vllm import VLLMEngine
            ecfg = SimpleNamespace(dtype="bfloat16" if device.type == "cuda" else "float32",
                                   gpu_memory_utilization=0.5, enable_prefix_caching=True, sleep=False,
                                   max_model_len=2048, enforce_eager=False, kv_cache_gb=1)
            rows += bench_gen(VLLMEngine(gen_model, tok, ecfg, progress=False), plan["gen"], vocab, "vllm")
            print(rows[-2], rows[-1], sep="\n", flush=True)
        policy.float()
        free()
    if "train" in sections:
        tcfg = SimpleNamespace(grad_clip=1.0, weight_decay=0.0, warmup_ratio=0.0, schedule="constant", precision="bf16")
        tr = TorchTrainer(policy, 1e-6, 1000, tcfg)
        rows.append(bench_train(tr, policy, plan["train"], vocab, device, "torch", n_params, peak))
        print(rows[-1], flush=True)
        del tr
        free()
        if importlib.util.find_spec("deepspeed") is None or importlib.util.find_spec("pydantic") is None:
            note("train", "deepspeed (or pydantic) not installed (DeepSpeed row)")
        else:
            from harness.runtime.backends import DeepSpeedTrainer
            bcfg = SimpleNamespace(zero_stage=2, offload_optimizer=False, torch_adam=True, bf16_weights=False,
                                   extensions_dir=None)
            ds_policy = model(a.size, tok, device)
            tr = DeepSpeedTrainer(ds_policy, 1e-6, 1000, tcfg, bcfg)
            rows.append(bench_train(tr, ds_policy, plan["train"], vocab, device, "deepspeed z2", n_params, peak))
            print(rows[-1], flush=True)
            del tr, ds_policy
            free()
    if "iter" in sections:
        if importlib.util.find_spec("pydantic") is None:
            note("iter", "pydantic not installed (the harness's config; see the docstring for the wheels)")
        else:
            for algo in ("ppo", "vineppo"):
                rows.append(bench_iter(policy, tok, plan["it"], algo, device))
                print(rows[-1], flush=True)
                free()
    print(f"\n{name} | {n_params / 1e9:.2f}B random Llama | {'quick' if a.quick else 'full'} | "
          f"{time.time() - t_start:.0f} s total\n")
    print("| section | engine/backend | workload | tokens | seconds | tokens/s | MFU | split (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['section']} | {r['engine']} | {r['what']} | {r.get('tokens', '')} | {r.get('seconds', '')} | "
              f"{r.get('tok_s', '')} | {r.get('mfu', '')} | {r.get('split', '')} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "params": n_params, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
