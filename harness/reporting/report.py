"""The reproduction report: every figure and table of a sweep, one computed reading per figure, and "paper vs ours".

    python -m harness.plot results/tiny --report    (harness.reporting.plot writes table.md, then calls `write`)

Besides the accuracy figures and table.md it draws, from the files the runs wrote (harness/reporting/runs.py, with the
value-analysis cache RUN_DIR/analysis/values/*.json of `python -m harness.analyze values`):
  value_mae.png          MAE of PPO's critic / VinePPO's MC estimate against MC ground truth, per snapshot
  value_calibration.png  predicted vs ground-truth value at every analyzed state
  value_ranking.png      top-1 accuracy at ranking alternative next steps, with the random baseline
  kl_frontier.png        accuracy vs KL(pi || ref) at each evaluation (one curve per method)
  train_vs_test.png      accuracy on the training episodes vs held-out accuracy at each evaluation
  k_ablation.png         VinePPO final test accuracy and seconds per iteration vs K (when the sweep varies K)
Sections whose data are missing are left out with a note; broken runs are skipped with a warning.

Each section is a function: its frame in, (markdown lines, the readings "paper vs ours" compares) out; it writes its
figures into `out`. The paper's numbers come from harness/reporting/paper_results.yaml only.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.metrics import atomic_write
from harness.reporting import figures, paper
from harness.reporting import runs as R
from harness.reporting.style import NAMES, color, display
from harness.reporting.table import final_rows

METHODS = figures.VALUE_METHODS                # PPO and VinePPO: the two the paper's analyses compare


def _fmt(x, d=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _pm(x, d=3) -> str:
    """mean ± SD over seeds (the SD only with 2+ seeds)."""
    x = np.asarray([v for v in x if v is not None and not math.isnan(v)], float)
    if not len(x):
        return "–"
    return f"{x.mean():.{d}f} ± {x.std(ddof=1):.{d}f}" if len(x) > 1 else f"{x.mean():.{d}f}"


def _per_seed(v: pd.DataFrame, alg: str, col: str, final: bool = False) -> list[float]:
    """Each seed's `col` averaged over its snapshots after iteration 0 (or at its last snapshot)."""
    out = []
    for _, g in v[(v.algorithm == alg) & (v.iteration > 0)].dropna(subset=[col]).groupby("run"):
        out.append(float(g.sort_values("iteration")[col].iloc[-1]) if final else float(g[col].mean()))
    return out


# --- sections ------------------------------------------------------------------------------------------------------
def accuracy_section(results: Path, df: pd.DataFrame, split: str, table_md: str) -> tuple[list[str], dict]:
    """The header, table.md and each method's final test accuracy over the SFT start. Readings: {method: [final
    test accuracy of each seed]} for SFT, PPO and VinePPO."""
    L = [f"# Reproduction report: `{results}`", "",
         f"Written by `python -m harness.plot {results} --report` from the files the runs wrote; every number "
         "below is computed from them. Wall-clock numbers depend on the machine that ran the sweep.", ""]
    states = df.groupby("run").state.first()
    L += [f"{len(states)} runs with evaluations, {(states == 'done').sum()} done. Curves: {split} split.", "",
          "## Accuracy", "", table_md.strip(), "",
          "![](accuracy_vs_iteration.png) ![](accuracy_vs_wallclock.png) ![](accuracy_vs_compute.png)", ""]
    test = final_rows(df, "test")
    fin = {a: test[test.label == a].acc.tolist() for a in ("sft", "ppo", "vineppo")}
    for a in ("ppo", "vineppo"):
        if fin[a] and fin["sft"]:
            L.append(f"- {NAMES[a]}: final test accuracy {_pm(fin[a])} (mean ± SD over {len(fin[a])} seeds), "
                     f"{np.mean(fin[a]) - np.mean(fin['sft']):+.3f} over the SFT start ({np.mean(fin['sft']):.3f}).")
    return L + [""], fin


def value_section(v: pd.DataFrame, raw: dict, results: Path, out: Path) -> tuple[list[str], dict]:
    """The value analysis (value_mae / value_calibration / value_ranking.png). Readings: per method the per-seed
    MAE, top-1 and random top-1, and the VinePPO / PPO MAE `ratio`; {} without an analysis."""
    L = ["## Why VinePPO wins: value prediction", ""]
    if v.empty:
        return L + ["No value analysis cached: run the sweep with `train.keep_every: N` and "
                    f"`python -m harness.analyze values {results}` first.", ""], {}
    pv = paper.numbers()["values"]
    figures.plot_values(v, raw, out, pv["alternatives"])
    p = v.iloc[0]
    L += [f"From {v.run.nunique()} runs' weight snapshots ({len(v)} analyzed): held-out responses sampled by each "
          f"snapshot's policy, ground truth = {int(p.gt_rollouts)} MC rollouts per state; PPO = its critic, VinePPO = "
          f"its own K-rollout estimate (K = {', '.join(str(int(k)) for k in sorted(v.K.dropna().unique())) or '–'}) "
          "with fresh seeds. Mean ± SD over seeds; each seed averaged over its snapshots after iteration 0.", "",
          "| method | seeds | MAE (snapshots > 0) | MAE (last snapshot) | MAE (iteration 0) | top-1 ranking | "
          "random pick | states / snapshot | ranking states / snapshot |", "|---|---|---|---|---|---|---|---|---|"]
    got = {}
    for alg in [a for a in METHODS if a in set(v.algorithm)]:
        g = v[v.algorithm == alg]
        got[alg] = {"mae": _per_seed(v, alg, "mae"), "top1": _per_seed(v, alg, "top1"),
                    "random": _per_seed(v, alg, "random")}
        L.append(f"| {NAMES[alg]} | {g.run.nunique()} | {_pm(got[alg]['mae'])} | {_pm(_per_seed(v, alg, 'mae', True))}"
                 f" | {_pm(g[g.iteration == 0].mae.tolist())} | {_pm(got[alg]['top1'], 2)} | "
                 f"{_pm(got[alg]['random'], 2)} | {g.n_states.mean():.0f} | {g.n_rank.mean():.1f} |")
    L += ["", "![value MAE](value_mae.png) ![calibration](value_calibration.png) ![ranking](value_ranking.png)", ""]
    if len(got) == 2:
        r = np.mean(got["vineppo"]["mae"]) / np.mean(got["ppo"]["mae"])
        L += [f"- **MAE**: VinePPO {np.mean(got['vineppo']['mae']):.3f} vs PPO {np.mean(got['ppo']['mae']):.3f}: "
              f"VinePPO's error is {r:.2f}x PPO's (paper, {pv['setting']}: "
              f"{pv['mae']['vineppo']} vs {pv['mae']['ppo']}, {pv['mae']['vineppo'] / pv['mae']['ppo']:.2f}x).",
              f"- **Ranking**: top-1 {np.mean(got['vineppo']['top1']):.2f} (VinePPO) vs "
              f"{np.mean(got['ppo']['top1']):.2f} (PPO); a random pick scores "
              f"{np.mean(got['ppo']['random'] + got['vineppo']['random']):.2f} on the same states "
              f"(1/{pv['alternatives']} without GT ties). Ties: a tied maximum prediction picks uniformly among the "
              "tied steps; every GT-best step counts as right.", ""]
    if "vineppo" in got:    # the error a K-rollout mean has from sampling alone, at the GT values: E|Bin(K, v)/K - v|
        rs = [r for (_, it), r in raw.items() if r["algorithm"] == "vineppo" and it > 0 and r.get("K")]
        noise = [np.mean([sum(math.comb(r["K"], k) * v ** k * (1 - v) ** (r["K"] - k) * abs(k / r["K"] - v)
                              for k in range(r["K"] + 1)) for v in r["gt"]]) for r in rs]
        if noise:
            L += [f"- VinePPO's MAE expected from sampling K rollouts alone (an unbiased estimate): "
                  f"{np.mean(noise):.3f}, measured {np.mean(got['vineppo']['mae']):.3f}.", ""]
    # Error vs position in the chain (paper: PPO's grows with the step index, VinePPO's shrinks), snapshots > 0.
    by_step = {alg: {} for alg in got}
    for r in (r for (_, it), r in raw.items() if it > 0):
        for s, g, p in zip(r["step"], r["gt"], r["pred"]):
            by_step[r["algorithm"]].setdefault(min(s, 8), []).append(abs(p - g))
    steps = sorted({s for d in by_step.values() for s in d})
    if steps:
        L += ["MAE by step index of the state (snapshots > 0; 8 = 8 and later):", "",
              "| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
        L += [f"| {NAMES[a]} | " + " | ".join(_fmt(np.mean(d[s]) if s in d else None) for s in steps) + " |"
              for a, d in by_step.items()] + [""]
    got["ratio"] = (np.mean(got["vineppo"]["mae"]) / np.mean(got["ppo"]["mae"])) if len(got) == 2 else None
    return L, got


def _color(lab: str, i: int):
    return color(lab.split()[0], i)          # the frames' labels are display names here ("VinePPO K9")


def kl_section(e: pd.DataFrame, split: str, out: Path) -> tuple[list[str], dict]:
    """Accuracy against KL to the reference (kl_frontier.png). Readings: {method: accuracy at the smallest final
    KL of the methods}."""
    L, frontier = ["## KL–accuracy frontier", ""], {}
    if not e.kl.notna().any():
        return L, frontier
    figures.plot_xy(e, "kl", "KL(pi || ref), sequence level, on the policy's samples", f"{split} accuracy",
                    out / "kl_frontier.png", _color)
    L += ["![](kl_frontier.png)", ""]
    # methods that report a KL after the start (DPO+ and RestEM have no KL to a reference in their rows)
    means = {lab: g.groupby("iteration")[["kl", "acc"]].mean() for lab, g in e[e.kl.notna()].groupby("label")
             if (g.iteration > 0).any()}
    kstar = min(m.kl.iloc[-1] for m in means.values())
    for lab, m in means.items():
        m = m.sort_values("kl")
        frontier[lab] = float(np.interp(kstar, m.kl, m.acc))
        L.append(f"- {lab}: final KL {m.kl.iloc[-1]:.3f} at {split} accuracy {m.acc.iloc[-1]:.3f}; "
                 f"at KL {kstar:.3f} (the smallest final KL of the methods) {frontier[lab]:.3f}.")
    return L + [""], frontier


def train_test_section(e: pd.DataFrame, split: str, out: Path) -> tuple[list[str], dict]:
    """Held-out against training accuracy (train_vs_test.png). Readings: {method: slope of held-out vs training}."""
    L, slopes = ["## Train vs test", ""], {}
    if not e.train_acc.notna().any():
        return L, slopes
    figures.plot_xy(e, "train_acc", "training accuracy (sampled episodes since the previous evaluation)",
                    f"{split} accuracy", out / "train_vs_test.png", _color)
    L += ["![](train_vs_test.png)", ""]
    for lab, g in e.dropna(subset=["train_acc"]).groupby("label"):
        last = g[g.iteration == g.iteration.max()]
        gap = (f"at the end training {last.train_acc.mean():.3f}, {split} {last.acc.mean():.3f} "
               f"(gap {last.train_acc.mean() - last.acc.mean():+.3f})")
        if g.train_acc.nunique() < 2:                   # e.g. DPO+, which samples once
            L.append(f"- {lab}: one training accuracy only, no slope; {gap}.")
            continue
        slopes[lab] = float(np.polyfit(g.train_acc, g.acc, 1)[0])
        L.append(f"- {lab}: slope of {split} vs training accuracy {slopes[lab]:.2f}; {gap}.")
    return L + [""], slopes


def k_section(k: pd.DataFrame, out: Path) -> tuple[list[str], dict]:
    """The K ablation (k_ablation.png), when the sweep varies K. Readings: {K: mean final test accuracy}."""
    if k.empty or k.K.nunique() < 2:
        return [], {}
    pk = paper.k_ablation()
    figures.plot_k(k, pk, out / "k_ablation.png")
    g = k.groupby("K")
    L = ["## K ablation", "", "| K | seeds | final test accuracy | s / iteration | MC rollout s / iteration | "
         f"MC rollouts / iteration | generated tokens / iteration | paper, {pk['setting']} |",
         "|---|---|---|---|---|---|---|---|"]
    for K, r in g:
        L.append(f"| {K} | {len(r)} | {_pm(r.acc.tolist())} | {_pm(r.s_per_it.tolist(), 1)} | "
                 f"{_pm(r.mc_s_per_it.tolist(), 1)} | {r.rollouts_per_it.mean():.0f} | {r.tokens_per_it.mean():.0f} | "
                 f"{pk['vineppo'].get(K, '–')} |")
    lo, hi = g.acc.mean().idxmin(), g.acc.mean().idxmax()
    tok, sec = g.tokens_per_it.mean(), g.s_per_it.mean()
    L += ["", "![](k_ablation.png)", "",
          f"- Accuracy: K={hi} best ({g.acc.mean()[hi]:.3f}), K={lo} worst ({g.acc.mean()[lo]:.3f}). Cost: an "
          f"iteration generates {tok.max() / tok.min():.1f}x more tokens at K={tok.idxmax()} than at K={tok.idxmin()} "
          f"and takes {sec.max() / sec.min():.1f}x the seconds (K={sec.idxmax()} vs K={sec.idxmin()}; seconds depend "
          f"on the machine and its load when each run ran). "
          f"Paper: {pk['note']}; PPO {pk['ppo']}, SFT {pk['sft']}.", ""]
    return L, {int(K): float(a) for K, a in g.acc.mean().items()}


def _paper_gap(model: str, task: str) -> tuple[float, float, float]:
    """(VinePPO - PPO, VinePPO, PPO) in a Table 1 setting."""
    c = paper.numbers()["table1"][model][task]
    return c["vineppo"] - c["ppo"], c["vineppo"], c["ppo"]


def paper_vs_ours(df: pd.DataFrame, fin: dict, vals: dict, frontier: dict, slopes: dict, kres: dict) -> list[str]:
    """The readings of the sections above next to the paper's numbers."""
    pv, pk, claims = paper.numbers()["values"], paper.k_ablation(), paper.numbers()["claims"]
    L = ["## Paper vs ours", "", "| quantity | paper | ours |", "|---|---|---|"]
    gap = (f"{np.mean(fin['vineppo']) - np.mean(fin['ppo']):+.3f} (tiny task, accuracy fraction)"
           if fin["ppo"] and fin["vineppo"] else "–")
    (dm, vm, pm), (dg, _, _) = _paper_gap("rho-1.1b", "math"), _paper_gap("rho-1.1b", "gsm8k")
    L.append(f"| VinePPO − PPO, final test accuracy | {dm:+.1f} pts (1.1B MATH {vm} vs {pm}), {dg:+.1f} (1.1B GSM8K) "
             f"| {gap} |")
    if vals.get("ppo") and vals.get("vineppo"):
        L.append(f"| value MAE, PPO / VinePPO | {pv['mae']['ppo']} / {pv['mae']['vineppo']} ({pv['setting']}) | "
                 f"{np.mean(vals['ppo']['mae']):.3f} / {np.mean(vals['vineppo']['mae']):.3f} "
                 f"(ratio {vals['ratio']:.2f}) |")
        L.append(f"| top-1 ranking of next steps, PPO / VinePPO | {pv['ranking']} | "
                 f"{np.mean(vals['ppo']['top1']):.2f} / {np.mean(vals['vineppo']['top1']):.2f} (random "
                 f"{np.mean(vals['ppo']['random'] + vals['vineppo']['random']):.2f}) |")
    if kres:
        paper_k = " / ".join(f"K={K} {a}" for K, a in sorted(pk["vineppo"].items()))
        L.append(f"| K ablation, VinePPO final accuracy | {paper_k} % | "
                 + " / ".join(f"K={K} {a:.3f}" for K, a in sorted(kres.items())) + " |")
    if frontier:
        L.append(f"| accuracy at equal KL | {claims['kl_frontier']} | "
                 + ", ".join(f"{k} {a:.3f}" for k, a in frontier.items()) + " |")
    if slopes:
        L.append(f"| test vs train accuracy slope | {claims['generalization']} | "
                 + ", ".join(f"{k} {s:.2f}" for k, s in slopes.items()) + " |")
    last = df[(df.state == "done") & (df.iteration > 0)].sort_values("iteration").groupby("run").last()
    t = (last.wall_s / last.iteration).groupby(last.label).mean()
    if "ppo" in t and "vineppo" in t:
        L.append(f"| VinePPO / PPO seconds per iteration | {claims['seconds_per_iteration']} | "
                 f"{t['vineppo'] / t['ppo']:.1f}x |")
    return L + ["", "Paper numbers: `harness/reporting/paper_results.yaml`, from the facts file of the "
                "reproduction; [SEC] marks unverified secondary sources."]


# --- the report ----------------------------------------------------------------------------------------------------
def write(results: Path, df: pd.DataFrame, split: str, table_md: str, runs: list[R.Run]) -> Path:
    """report.md (and its figures) into `results`, from the evaluation frame `df` of runs.evals, the curves' split,
    table.md's text and the scanned runs."""
    rs = R.with_algorithm(runs)
    acc, fin = accuracy_section(results, df, split, table_md)
    val, vals = value_section(*R.values(rs), results, results)
    e = R.kl_train(rs, split)
    e = e[e.label.notna()]
    e["label"] = e.label.map(display)
    kl, frontier = kl_section(e, split, results)
    tt, slopes = train_test_section(e, split, results)
    k, kres = k_section(R.k_runs(rs), results)
    L = acc + val + kl + tt + k + paper_vs_ours(df, fin, vals, frontier, slopes, kres)
    atomic_write(results / "report.md", "\n".join(L) + "\n")
    return results / "report.md"
