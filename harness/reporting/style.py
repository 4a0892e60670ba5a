"""How methods are shown: their names, colours and order, the one table every figure, table and check uses.

A label is a method (the config's `label`, else its `algorithm`) plus what tells its runs apart (`ppo-lr=0.001`,
`vineppo-K9`): its first part picks the name and colour, the rest is shown after the name.
"""
from __future__ import annotations

from matplotlib import colormaps

# The paper's column order (Table 1), then the v2 baselines; anything else follows alphabetically.
ORDER = ["sft", "restem", "dpo", "ppo", "vineppo", "grpo", "rloo"]
NAMES = {"sft": "SFT", "restem": "RestEM", "dpo": "DPO+", "ppo": "PPO", "vineppo": "VinePPO", "grpo": "GRPO",
         "rloo": "RLOO"}
COLORS = {"sft": "#7f7f7f", "restem": "#8c564b", "dpo": "#9467bd", "ppo": "#1f77b4", "vineppo": "#d62728",
          "grpo": "#2ca02c", "rloo": "#ff7f0e"}
# One batch of prompts x samples per iteration: their budgets (iterations, episodes) are comparable.
FAMILY = ("ppo", "vineppo", "grpo", "rloo")


def base(label: str) -> str:
    """The method a label names: `vineppo-K9` -> `vineppo`."""
    return label.split("-")[0].lower()


def label_order(labels) -> list[str]:
    """The distinct labels in ORDER, then the others; alphabetical within a method."""
    return sorted(set(labels), key=lambda lab: (ORDER.index(base(lab)) if base(lab) in ORDER else len(ORDER), lab))


def display(label: str) -> str:
    """`vineppo-K9` -> `VinePPO K9`; an unknown method keeps its own spelling."""
    first, _, rest = label.partition("-")
    return NAMES.get(first.lower(), first) + (f" {rest}" if rest else "")


def color(label: str, i: int):
    """The method's colour; an unknown one takes the i-th colour of tab10."""
    return COLORS.get(base(label), colormaps["tab10"](i % 10))
