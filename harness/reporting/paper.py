"""The paper's numbers, read from paper_results.yaml (the only place they are written, each with its source)."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml


@functools.cache
def numbers() -> dict:
    """paper_results.yaml as a dict (read once)."""
    return yaml.safe_load((Path(__file__).parent / "paper_results.yaml").read_text())


def setting(cfg: dict, configs: dict[str, dict] | None = None) -> str | None:
    """"<model> <task>" (e.g. "rho-1.1b math") when a run is in a setting of the paper's Table 1, else None. A run
    started from another run of the sweep (model.init_run) takes that run's model, looked up in `configs`
    (run name -> config)."""
    model = cfg.get("model") or {}
    if model.get("init_run") and configs is not None:
        parent = configs.get(model["init_run"])
        return setting(parent, configs) if parent is not None else None
    src = " ".join(str(model.get(k) or "") for k in ("hub", "path", "gguf_file")).lower()
    task = (cfg.get("task") or {}).get("name")
    for key, needles in numbers()["models"].items():
        if any(n in src for n in needles) and task in numbers()["table1"][key]:
            return f"{key} {task}"
    return None


def value(setting_: str | None, algorithm: str) -> float | None:
    """The Table 1 cell of a setting ("rho-1.1b math") and method; None when not found or not a paper setting."""
    if not setting_:
        return None
    model, task = setting_.split()
    return numbers()["table1"][model][task].get(algorithm)


def k_ablation() -> dict:
    """The K ablation (VinePPO accuracy by K) with its setting's SFT start and PPO from Table 1."""
    k = numbers()["k_ablation"]
    cells = numbers()["table1"][k["model"]][k["task"]]
    return {**k, "sft": cells["sft"], "ppo": cells["ppo"]}
