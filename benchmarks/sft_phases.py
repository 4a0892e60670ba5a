"""Where the tiny SFT stage spends its steps: teacher-forced error per token kind on clean validation solutions.

    python benchmarks/sft_phases.py [--heads 16] [--precision fp32|bf16] [--lr 2e-3] [--schedule constant] [--seed 0]

A step of the tiny task, `9b*3=7;`, asks for five different skills: copy the previous result (v), name the next
operation (lab), fetch its operator (op) and operand (b) from the prompt by that label, and compute the result mod 10
(res+, res-, res*). This trains the tiny Llama like algorithms/sft.py (AdamW, grad clip 1, linear warmup, batches of
noisy demonstrations) and prints, every --every steps, the error rate of each kind and the share of validation
solutions predicted exactly (~ greedy accuracy). It shows the order in which the skills are learned and which one a
recipe gets stuck on (see docs/tasks.md "A robust SFT start").
"""
import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.runtime import models# noqa: E402
from harness.tasks.arithmetic import Arithmetic  # noqa: E402


def encode(tok, task, problems, rng, noise):
    """Right-padded prompt+target ids, target mask and the kind of every target token."""
    rows = []
    for p in problems:
        prompt = [tok.bos_token_id] + tok.encode(task.prompt(p), add_special_tokens=False)
        text = task.solution(p, rng, noise)
        kinds = []
        for step in text.split(";"):
            kinds += ["#", "ans", "eos"] if step.startswith("#") else ["v", "lab", "op", "b", "=", "res" + step[2], ";"]
        rows.append((prompt, tok.encode(text, add_special_tokens=False) + [tok.eos_token_id], kinds))
    L = max(len(p) + len(t) for p, t, _ in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    mask = torch.zeros((len(rows), L - 1))
    kind = [[None] * (L - 1) for _ in rows]
    for i, (p, t, k) in enumerate(rows):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        mask[i, len(p) - 1:len(p) + len(t) - 1] = 1
        kind[i][len(p) - 1:len(p) + len(t) - 1] = k
    return ids, (ids != tok.pad_token_id).long(), mask, kind


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, v in (("steps", 1000), ("batch", 64), ("seed", 0), ("threads", 1), ("heads", 16), ("every", 100)):
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schedule", choices=["linear", "constant"], default="constant")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task, tok = Arithmetic(Arithmetic.Config()), models.char_tokenizer()
    model = models.tiny_llama(tok, heads=a.heads, seed=a.seed)
    model.config._attn_implementation = "eager"
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), weight_decay=0.0)
    warm = math.ceil(0.05 * a.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 1.0 if a.schedule ==
                                              "constant" else max(0.0, (a.steps - s) / (a.steps - warm)))
    val = encode(tok, task, task.problems("validation"), random.Random(0), 0.0)
    rng, t0 = random.Random(a.seed), time.time()
    for step in range(a.steps + 1):
        if step % a.every == 0:
            ids, attn, mask, kind = val
            with torch.no_grad():
                ok = (model(input_ids=ids, attention_mask=attn).logits[:, :-1].argmax(-1) == ids[:, 1:]) | (mask == 0)
            errs: dict[str, list[bool]] = {}
            for i, row in enumerate(kind):
                for j, k in enumerate(row):
                    if k:
                        errs.setdefault(k, []).append(not ok[i, j])
            print(f"step {step:5d}  exact {ok.all(1).float().mean():.3f}  error " + " ".join(
                f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(errs.items()) if k in
                ("op", "b", "res+", "res-", "res*", "v", "lab")) + f"  ({time.time() - t0:.0f} s)", flush=True)
        if step == a.steps:
            break
        ids, attn, mask, _ = encode(tok, task, random.Random(a.seed * 100003 + step).sample(task.problems("train"),
                                                                                            a.batch), rng, 0.2)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else torch.autocast("cpu",
                                                                                                     enabled=False)
        with ctx:
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        (-(logp * mask).sum() / mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
