"""table.md: per method, final test accuracy (mean ± 95% CI over seeds), its gain over the SFT start, greedy accuracy,
grad steps and wall-clock to reach PPO's best validation accuracy, the paper's number in a Table 1 setting; and the
PPO family compared at equal budgets. Data in (the frame of runs.evals), markdown out."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.reporting import paper
from harness.reporting.style import FAMILY, display, label_order

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def ci95(x) -> float:
    x = np.asarray(x, dtype=float)
    return T95.get(len(x) - 1, 1.96) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")


def final_rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Each finished run's evaluation at its last iteration on `split`."""
    d = df[(df.split == split) & (df.state == "done")]
    return d[d.iteration == d.total_iterations]


def start_point(final: pd.DataFrame) -> dict | None:
    """The SFT start's final accuracy on a split, with its binomial variance (None without an SFT run)."""
    sft = final[final.algorithm == "sft"]
    if sft.empty:
        return None
    p, n = float(sft.acc.mean()), float((sft.n_problems * sft.samples.fillna(1)).iloc[0])
    return {"acc": p, "var": p * (1 - p) / n if n > 0 else 0.0}


def vs_start(g: pd.DataFrame, start: dict | None) -> str:
    if start is None or g.algorithm.iloc[0] == "sft":
        return "–"
    acc = g.acc.to_numpy(float)
    d = acc.mean() - start["acc"]
    var_seeds = acc.var(ddof=1) / len(acc) if len(acc) > 1 else 0.0
    noise = 2 * math.sqrt(start["var"] + var_seeds)
    return f"{d:+.3f}" + (" *within noise*" if d < noise else "")


def table(df: pd.DataFrame) -> str:
    """The results table; a sweep covering several settings (model x task) gets one table per setting, and a
    setting of the paper's Table 1 a `paper` column (test %, harness/reporting/paper_results.yaml)."""
    left = df.attrs.get("left_out") or []
    tail = ("\n**Runs left out, incomplete or with warnings:**\n\n" + "".join(f"- {n}\n" for n in left)) if left else ""
    if "setting" not in df:
        return _table(df, None) + tail
    settings = sorted({s for s in df.setting if isinstance(s, str)})     # (pandas makes a missing one NaN)
    if not settings or (len(settings) == 1 and df.setting.notna().all()):
        return _table(df, settings[0] if settings else None) + tail
    parts = []
    for s in settings + ([None] if df.setting.isna().any() else []):
        parts.append(f"### {s or 'other runs'}\n\n" + _table(df[df.setting == s] if s else df[df.setting.isna()], s))
    return "\n".join(parts) + tail


def _table(df: pd.DataFrame, setting: str | None) -> str:
    test = final_rows(df, "test")
    val = df[df.split == "validation"]
    ppo = val[(val.algorithm == "ppo") & (val.state == "done")]
    target = None
    if len(ppo):
        target = ppo.groupby("iteration").acc.mean().max()
    ext = [c for c in ("eval_cli_acc", "lm_eval_acc") if c in test and test[c].notna().any()]
    start = start_point(test)
    lines = ["| method | test acc (mean ± 95% CI) | vs start | greedy | seeds | iterations | grad steps | wall-clock s |"
             + (f" grad steps to PPO best val ({target:.3f}) | wall-clock s to PPO best val |" if target else "")
             + "".join(f" {'harness.evaluate' if c == 'eval_cli_acc' else 'lm-eval'} test |" for c in ext)
             + (" paper test % |" if setting else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if target else "") + "---|" * (len(ext) + bool(setting))]
    for lab in label_order(test.label):
        g = test[test.label == lab]
        acc = g.acc.to_numpy(float)
        ci = ci95(acc)
        greedy = g.acc_greedy.mean() if g.acc_greedy.notna().any() else float("nan")
        row = (f"| {display(lab)} | {acc.mean():.3f} ± {ci:.3f} | {vs_start(g, start)} | {greedy:.3f} | {len(g)} | "
               f"{int(g.iteration.mean())} | {int(g.grad_steps.mean())} | {g.wall_s.mean():.0f} |")
        if target:
            row += _to_target(g, val, target)
        for c in ext:
            row += f" {g[c].mean():.3f} |"
        if setting:
            pv = paper.value(setting, g.algorithm.iloc[0])
            row += f" {pv} |" if pv is not None else " – |"
        lines.append(row.replace("± nan", "").replace("nan", "–"))
    notes = ["", "Test accuracy: each run's evaluation after its last iteration; CI = t-interval over seeds. "
                 "Wall-clock excludes evaluation. `vs start`: mean minus the SFT start's test accuracy, marked "
                 "*within noise* when below twice its standard error (the start's binomial error and the spread "
                 "over seeds): such a method has not measurably learned."]
    return "\n".join(lines + notes) + "\n" + budget_table(df)


def _to_target(g: pd.DataFrame, val: pd.DataFrame, target: float) -> str:
    """The two `to PPO best val` cells of a method: mean grad steps and wall-clock of the seeds that got there."""
    n = g.run.nunique()
    if g.algorithm.iloc[0] == "sft":
        return " – | – |"
    hits = []
    for rid in g.run:
        v = val[(val.run == rid) & (val.acc >= target - 1e-12)].sort_values("iteration")
        if len(v):
            hits.append((v.grad_steps.iloc[0], v.wall_s.iloc[0]))
    if not hits:
        return f" not reached (0/{n}) | – |"
    return f" {np.mean([h[0] for h in hits]):.0f} ({len(hits)}/{n} seeds) | {np.mean([h[1] for h in hits]):.0f} |"


def at(g: pd.DataFrame, x: str, value: float, y: str = "acc") -> float:
    """Mean over the runs of g of column y at x = value (linear interpolation between evaluations)."""
    runs = [r.sort_values(x) for _, r in g.groupby("run")]
    return float(np.mean([np.interp(value, r[x].to_numpy(float), r[y].to_numpy(float)) for r in runs]))


def budget_table(df: pd.DataFrame, split: str = "validation") -> str:
    """The PPO family compared at equal budgets: the largest iteration count, number of training episodes and
    training wall-clock that every one of their runs reached (validation curves, interpolated between evaluations)."""
    d = df[(df.split == split) & (df.state == "done") & df.algorithm.isin(FAMILY)]
    if d.label.nunique() < 2:
        return ""
    ends = d.groupby("run")[["iteration", "episodes", "wall_s"]].max()
    n_it, n_ep, wall = ends.iteration.min(), ends.episodes.min(), ends.wall_s.min()
    lines = ["", f"**At equal budgets** ({split} accuracy, mean over seeds; the PPO family only):", "",
             f"| method | seeds | at iteration {n_it:.0f} (equal iterations) | at {n_ep:.0f} episodes (equal "
             f"episodes) | at {wall:.0f} s (equal wall-clock) | iterations reached in {wall:.0f} s |",
             "|---|---|---|---|---|---|"]
    for lab in label_order(d.label):
        g = d[d.label == lab]
        lines.append(f"| {display(lab)} | {g.run.nunique()} | {at(g, 'iteration', n_it):.3f} | "
                     f"{at(g, 'episodes', n_ep):.3f} | {at(g, 'wall_s', wall):.3f} | "
                     f"{at(g, 'wall_s', wall, 'iteration'):.0f} |")
    lines += ["", "Equal iterations: the largest iteration count all these runs reached. Equal episodes: sampled "
              "responses trained on (prompts x samples per iteration). Equal wall-clock: the shortest of these runs' "
              "training times (evaluation excluded), each curve read there."]
    return "\n".join(lines) + "\n"
