"""Tiny stand-in models for a rehearsal offline (`python -m harness.sweep FILE --rehearse --stand-in tiny`)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from harness import tasks
from harness.core.metrics import atomic_write
from harness.runtime import models
from harness.tasks.check import perturb
from harness.tasks.common import read_jsonl as read_rows

REPO = Path(__file__).resolve().parents[2]


def _wrong_answer(task, problem: dict, target: str) -> str | None:
    """`target` with its final answer replaced by a wrong one (None if the answer is not where expected)."""
    ans = problem["answer"]
    for old in (f"#### {ans}", f"\\boxed{{{ans}}}"):
        i = target.rfind(old)
        if i >= 0:
            return target[:i] + old.replace(ans, perturb(ans)) + target[i + len(old):]
    return None


def make_stand_in(task_cfg: dict, dtype: str, store: Path, train_rows: int, test_rows: int) -> dict:
    """A stand-in model + data for a task that reads real data (GSM8K, MATH): a random 2-layer Llama with a BPE
    tokenizer, trained to recite the `train_rows` shortest shipped training solutions, half with a wrong final answer
    (harness/launch/rehearse.py's docstring says why); the task reads those problems and `test_rows` test ones."""
    name = task_cfg["name"]
    out, data = store / f"{name}-{dtype}", store / "data" / name
    if (out / "config.json").exists():
        return {"path": str(out), "data_dir": str(data)}
    cls = tasks.get(name)
    src = REPO / "tests" / "data" / name
    t0 = time.time()
    task = cls(cls.Config(**{**task_cfg, "data_dir": str(src), "n_validation": 1}))
    pairs = []
    for split in ("train", "test"):
        rows = read_rows(src / f"{split}.jsonl")
        probs = [cls._problem(r, f"{split}-{i}") for i, r in enumerate(rows)]
        order = sorted(range(len(rows)), key=lambda i: len(task.prompt(probs[i]) + task.sft_target(probs[i])))
        keep = sorted(order[:train_rows if split == "train" else test_rows])
        atomic_write(data / f"{split}.jsonl", "".join(json.dumps(rows[i]) + "\n" for i in keep))
        if split == "train":
            pairs = [(task.prompt(probs[i]), task.sft_target(probs[i]), probs[i]) for i in keep]
    texts = [p + t for p, t, _ in pairs] + [p + w for p, t, x in pairs if (w := _wrong_answer(task, x, t))]
    tok = models.bpe_tokenizer(texts * 4)
    torch.manual_seed(0)
    model = models.tiny_llama(tok, max_positions=2048)
    ids = [[tok.bos_token_id] + tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for x in texts]
    width = max(map(len, ids))
    batch = torch.full((len(ids), width), tok.pad_token_id)
    for i, x in enumerate(ids):
        batch[i, :len(x)] = torch.tensor(x)
    att = (torch.arange(width)[None] < torch.tensor([len(x) for x in ids])[:, None]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):                                # recites them (loss ~0.05; ~1 min on 2 cores)
        loss = model(input_ids=batch, attention_mask=att, labels=batch.masked_fill(att == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    models.save(model.to(getattr(torch, dtype)), tok, tmp)
    os.replace(tmp, out)
    print(f"[rehearse] stand-in for {name} ({dtype}): {len(texts)} texts, loss {float(loss.detach()):.3f}, "
          f"{time.time() - t0:.0f}s -> {out}", flush=True)
    return {"path": str(out), "data_dir": str(data)}
