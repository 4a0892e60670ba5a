"""bf16 CPU autocast vs fp32, one SFT batch of the tiny model: the loss and each parameter's gradient against an fp64
reference (relative error, cosine), worst parameters first.

    python benchmarks/precision_grads.py [--threads 1]
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/precision_grads.py    # the same CPU without AMX kernels

Shows whether bf16 breaks one op (one parameter's gradient far off) or perturbs all of them alike (docs/tasks.md
"Precision").
"""
import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sft_phases import encode  # noqa: E402
from harness.runtime import models# noqa: E402
from harness.tasks.arithmetic import Arithmetic  # noqa: E402


def grads(model, batch, dtype, bf16):
    ids, attn, mask, _ = batch
    m = model.to(dtype)
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    out = {n: p.grad.detach().double().clone() for n, p in m.named_parameters()}
    model.to(torch.float32)
    return loss.item(), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task, tok = Arithmetic(Arithmetic.Config()), models.char_tokenizer()
    model = models.tiny_llama(tok, heads=a.heads)
    model.config._attn_implementation = "eager"
    batch = encode(tok, task, task.problems("train")[:64], random.Random(0), 0.2)
    (l64, g64), (l32, g32), (lbf, gbf) = (grads(model, batch, torch.float64, False),
                                          grads(model, batch, torch.float32, False),
                                          grads(model, batch, torch.float32, True))
    print(f"loss fp64 {l64:.7f}  fp32 {l32:.7f}  bf16 autocast {lbf:.7f}")
    rel = {n: (float((gbf[n] - g).norm() / g.norm()), float((g32[n] - g).norm() / g.norm()),
               float((gbf[n] * g).sum() / (gbf[n].norm() * g.norm()))) for n, g in g64.items()}
    print(f"{'parameter':52s} bf16 rel. err  bf16 cosine  fp32 rel. err")
    for n, (rb, r32, cos) in sorted(rel.items(), key=lambda kv: -kv[1][0])[:8]:
        print(f"{n:52s} {rb:12.4f}  {cos:11.6f}  {r32:12.2e}")
    median = sorted(v[0] for v in rel.values())[len(rel) // 2]
    print(f"median bf16 relative error over {len(rel)} parameters: {median:.4f}")


if __name__ == "__main__":
    main()
