"""Training backends: one trained model with its AdamW and learning-rate schedule, behind five calls.

    tr = build_trainer(cfg, model, lr, total_steps)
    out = tr.model(**inputs)   # training forward passes go through tr.model (DeepSpeed: the engine)
    tr.backward(loss)          # once per micro-batch; gradients accumulate
    grad_norm = tr.step()      # clip, optimizer step, schedule step, zero grads
    tr.save(dir) / tr.load(dir)            # resumable state (every process calls: DeepSpeed writes shards)
    with tr.full_model() as m: ...         # the module with all its weights in place (ZeRO-3 gathers them)

`torch` (default): plain PyTorch, one process. `deepspeed`: the same optimizer and schedule run by a DeepSpeed engine
with ZeRO stage 0-3 (optionally optimizer states + step on the CPU), one or several processes. Forward passes that
need no gradient may call the module itself (ZeRO-3 installs its parameter-gathering hooks on it).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import torch

from harness.runtime import dist
from harness.core.metrics import safe_load
from harness.runtime.models import bump_weights_version

ROOT = Path(__file__).resolve().parents[2]


def lr_factor(tcfg, total: int):
    """Linear warmup over `warmup_ratio` of the planned steps, then linear decay to 0 at the last (`linear`), none
    (`constant`), or none until the last `decay_ratio` of the steps, which decay linearly to 0 (`wsd`:
    warmup-stable-decay)."""
    warm = int(math.ceil(tcfg.warmup_ratio * total))
    start = warm if tcfg.schedule == "linear" else total - int(math.ceil(tcfg.decay_ratio * total))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        if tcfg.schedule == "constant" or step < start:
            return 1.0
        return max(0.0, (total - step) / max(1, total - max(start, warm)))
    return factor


def adamw_args(tcfg, lr: float) -> dict:
    return {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": tcfg.weight_decay}


class Movement:
    """How far optimizer steps move a model, on a fixed strided sample of every tensor (<= 4096 values each: cheap at
    any size; not measured under ZeRO-3, whose partitioned weights live outside the module's tensors): per step the
    relative update size ||dtheta|| / ||theta|| and the fraction of sampled values that changed, and the fraction
    changed since the trainer was built (bf16 weights without a master copy change ~2% at lr 1e-6, fp32 ~100%).
    `steps` counts the steps that had a gradient to apply (norm > 0): a batch without signal (every advantage 0)
    moves nothing, rightly, and must not count toward the Stuck check."""

    def __init__(self, tensors):
        self.params = list(tensors)
        self.start = self.sample()
        self.steps, self.rows = 0, []
        self.checked = False            # the since-start check (movement_stats) runs once

    def sample(self) -> list[torch.Tensor]:
        return [p.detach().reshape(-1)[::max(1, p.numel() // 4096)].float().clone() for p in self.params if p.numel()]

    def around_step(self, step):
        before = self.sample()
        out = step()
        after = self.sample()
        if before:
            num = sum(float((a - b).square().sum()) for a, b in zip(after, before))
            den = sum(float(b.square().sum()) for b in before)
            self.rows.append((math.sqrt(num / max(den, 1e-30)), _changed(after, before)))
        return out

    def count(self, grad_norm: float | None) -> None:
        if grad_norm is not None and math.isfinite(grad_norm) and grad_norm > 0:
            self.steps += 1

    def since_start(self) -> float | None:
        """Fraction of the sampled values that differ from the trainer's start (None: nothing sampled)."""
        now = self.sample()
        return _changed(now, self.start) if now else None

    def pop(self) -> dict[str, float]:
        """Mean per-step update size and changed fraction since the last pop (empty when no step was taken)."""
        rows, self.rows = self.rows, []
        if not rows:
            return {}
        return {"update_rel": sum(r for r, _ in rows) / len(rows), "changed": sum(c for _, c in rows) / len(rows)}


def _changed(after: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    """Fraction of the sampled values that differ between two samples."""
    return sum(int((a != b).sum()) for a, b in zip(after, before)) / sum(b.numel() for b in before)


class Stuck(Exception):
    """A trained model that has not moved from its start after train.stuck_steps optimizer steps."""


def movement_stats(name: str, trainer, cfg, it: int) -> dict[str, float]:
    """`<name>_update_rel` and `<name>_changed` of this iteration's steps of one trained model, and the check that
    it has moved from its start after train.stuck_steps steps: Stuck (raised before anything of the iteration is
    saved) when updates round away (low-precision weights, a tiny lr) or the gradients are all zero."""
    t, mv = cfg.train, getattr(trainer, "movement", None)
    if mv is None:
        return {}
    out = {f"{name}_{k}": round(v, 8) for k, v in mv.pop().items()}
    if t.stuck_steps and mv.steps >= t.stuck_steps and not mv.checked:
        mv.checked = True
        moved = mv.since_start()
        if moved is not None and moved < t.min_moved:
            raise Stuck(f"iteration {it}: after {mv.steps} optimizer steps with a gradient only {moved:.1%} of the {name}'s (sampled) "
                        f"weights differ from its start (train.min_moved {t.min_moved:g}): the updates round away "
                        f"(model.dtype {cfg.model.dtype}, lr {t.lr:g}) or the gradients are zero; stopped before "
                        f"saving anything of it (the last checkpoint is intact)")
    return out


def build_trainer(cfg, model, lr: float, total_steps: int):
    if cfg.backend.name == "deepspeed":
        return DeepSpeedTrainer(model, lr, total_steps, cfg.train, cfg.backend)
    return TorchTrainer(model, lr, total_steps, cfg.train)


class TorchTrainer:
    def __init__(self, model, lr, total_steps, tcfg):
        self.model, self.clip = model, tcfg.grad_clip
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw_args(tcfg, lr))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(tcfg, total_steps))
        self.movement = Movement(p for p in model.parameters() if p.requires_grad)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.movement.around_step(self.opt.step)
        self.movement.count(float(grad_norm))
        bump_weights_version(self.model)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(grad_norm)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / "state.pt.tmp"
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                    "sched": self.sched.state_dict()}, tmp)
        os.replace(tmp, path / "state.pt")

    def load(self, path: Path) -> None:
        sd = safe_load(path / "state.pt", next(self.model.parameters()).device)
        self.model.load_state_dict(sd["model"])
        bump_weights_version(self.model)
        self.opt.load_state_dict(sd["opt"])
        self.sched.load_state_dict(sd["sched"])

    @contextlib.contextmanager
    def full_model(self):
        yield self.model


def _master_copy(opt) -> list[torch.Tensor] | None:
    """The fp32 master weights a DeepSpeed bf16 optimizer keeps (ZeRO-0: FP16_UnfusedOptimizer / BF16_Optimizer,
    ZeRO-1/2: this process's flat partition), or None."""
    for name in ("fp32_groups_flat_partition", "single_partition_of_fp32_groups", "fp32_groups"):
        groups = getattr(opt, name, None)
        if groups:
            return [t for g in groups for t in (g if isinstance(g, (list, tuple)) else [g])]
    return None


class DeepSpeedTrainer:
    """A DeepSpeed engine with the same AdamW (torch's, unless offloaded) and schedule as TorchTrainer.

    - Gradient accumulation is ours (`managed_gradient_accumulation: false`): backward() only accumulates, step()
      reduces across processes and updates, whatever the number of micro-batches.
    - Each process's loss is its share of the minibatch loss (weights relative to the whole minibatch), so the
      gradient is the *sum* over processes; DeepSpeed averages, hence the factor `world` in backward().
    - ZeRO >= 1 clips and reports the pre-clip norm itself; at stage 0 (no ZeRO optimizer) an optimizer pre-step
      hook does it, after DeepSpeed's all-reduce, like TorchTrainer.
    - train.precision bf16 = torch autocast inside the engine (fp32 weights, gradients and reductions), as with
      TorchTrainer; `bf16_weights` switches to DeepSpeed's bf16 mode (bf16 weights, fp32 master copy).
    """

    def __init__(self, model, lr, total_steps, tcfg, bcfg):
        # JIT-built ops (shm comm on CPU, cpu_adam for offload) are compiled once into this cache (~45 s each).
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(bcfg.extensions_dir or ROOT / ".cache" /
                                                               "torch_extensions").resolve()))
        import deepspeed
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        dist.init(force=True)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.stage, self.world = bcfg.zero_stage, dist.world()
        a = adamw_args(tcfg, lr)
        # memory_efficient_linear would replace torch.nn.functional.linear for the whole process, for good.
        zero: dict = {"stage": bcfg.zero_stage, "memory_efficient_linear": False}
        if bcfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        native_clip = bcfg.zero_stage > 0 or bcfg.bf16_weights
        config = {
            "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "optimizer": {"type": "AdamW", "params": {**a, "betas": list(a["betas"]),
                                                      "torch_adam": bcfg.torch_adam and not bcfg.offload_optimizer}},
            "gradient_clipping": tcfg.grad_clip if native_clip else 0.0,
            "zero_optimization": zero,
            "bf16": {"enabled": bcfg.bf16_weights},
            # The engine's forward switches off an autocast it does not own: give it ours (train.precision: bf16),
            # with no module's gradients communicated in bf16 (the default list would).
            "torch_autocast": {"enabled": tcfg.precision == "bf16" and not bcfg.bf16_weights, "dtype": "bfloat16",
                               "lower_precision_safe_modules": []},
            "steps_per_print": 2 ** 62, "wall_clock_breakdown": False,
        }
        factor = lr_factor(tcfg, total_steps)
        self.engine, self.opt, _, self.sched = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
        # Training forwards go through the engine: ZeRO-3 counts micro-steps there (accumulate vs overwrite grads).
        self.model, self.module = self.engine, self.engine.module
        # bf16 mode: the fp32 master copy is what the optimizer moves (the bf16 weights change only when it crosses
        # a bf16 step); ZeRO-3 partitions the weights into flat buffers the module's tensors do not show.
        watched = _master_copy(self.engine.optimizer) if bcfg.bf16_weights else None
        if watched is None:
            watched = [p for p in self.module.parameters() if p.requires_grad] if self.stage < 3 else []
        self.movement = Movement(watched)
        self._norm = float("nan")
        if not native_clip:
            def clip(opt, args, kwargs):
                self._norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), tcfg.grad_clip))
            self.engine.optimizer.register_step_pre_hook(clip)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> float:
        self.movement.around_step(self.engine.step)
        bump_weights_version(self.module)
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None and (self.stage > 0 or self.engine.bfloat16_enabled()) else self._norm
        self.movement.count(norm)
        return norm

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag="state")

    def load(self, path: Path) -> None:
        # DeepSpeed unpickles its files without restriction: check them first (mmap: types only, no data read).
        # ZeRO's optimizer states also hold three of DeepSpeed's plain data classes (an enum, a dataclass, the loss
        # scaler's state): admitted by name, nothing else.
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
        for f in sorted((path / "state").rglob("*.pt")):
            safe_load(f, mmap=True, allow=(ZeroStageEnum, fragment_address, LossScaler))
        load_path, _ = self.engine.load_checkpoint(str(path), tag="state", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}")
        bump_weights_version(self.module)

    @contextlib.contextmanager
    def full_model(self):
        if self.stage < 3:
            yield self.module
            return
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            yield self.module
