"""The reproduction report: every figure and table of a sweep, one computed reading per figure, and "paper vs ours".

    python -m harness.plot results/tiny --report          (harness.plot writes its figures, then calls `write`)

Besides harness.plot's accuracy figures and table it draws, from files only (config.yaml, metrics.jsonl and the
value-analysis cache RUN_DIR/analysis/values/*.json written by `python -m harness.analyze values`):
  value_mae.png          MAE of PPO's critic / VinePPO's MC estimate against MC ground truth, per snapshot
  value_calibration.png  predicted vs ground-truth value at every analyzed state
  value_ranking.png      top-1 accuracy at ranking alternative next steps, with the random baseline
  kl_frontier.png        accuracy vs KL(pi || ref) at each evaluation (one curve per method)
  train_vs_test.png      accuracy on the training episodes vs held-out accuracy at each evaluation
  k_ablation.png         VinePPO final test accuracy and seconds per iteration vs K (when the sweep varies K)
Sections whose data are missing are left out with a note; broken runs are skipped with a warning.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from harness.analyze import load_cache  # noqa: E402
from harness.metrics import atomic_write, read_jsonl  # noqa: E402
from harness.plot import paper_results  # noqa: E402

# The paper's numbers used here (harness/paper_results.yaml): RhoMath 1.1B on MATH, test accuracy %: the K ablation
# (§4.3) and the main-result cells it is compared with (§4.1); value analysis (§4.6).
_PAPER = paper_results()
PAPER_K = _PAPER["k_ablation"]
PAPER_VALUES = _PAPER["values"]
NAMES = {"ppo": "PPO", "vineppo": "VinePPO"}
COLORS = {"ppo": "#1f77b4", "vineppo": "#d62728"}


def _fmt(x, d=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _pm(x, d=3) -> str:
    """mean ± SD over seeds (the SD only with 2+ seeds)."""
    x = np.asarray([v for v in x if v is not None and not math.isnan(v)], float)
    if not len(x):
        return "–"
    return f"{x.mean():.{d}f} ± {x.std(ddof=1):.{d}f}" if len(x) > 1 else f"{x.mean():.{d}f}"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- data ---------------------------------------------------------------------------------------------------------
def runs(results: Path) -> list[tuple[Path, dict, list[dict]]]:
    """(dir, config, metrics rows) of every readable run; broken ones skipped with a warning."""
    out = []
    for d in sorted(p for p in results.iterdir() if p.is_dir() and (p / "config.yaml").exists()):
        try:
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            if not isinstance(cfg, dict) or "algorithm" not in cfg:
                raise ValueError("config.yaml is not a run config")
        except (OSError, yaml.YAMLError, ValueError) as e:
            warnings.warn(f"skipping {d}: {e}")
            continue
        out.append((d, cfg, read_jsonl(d / "metrics.jsonl")))
    return out


def value_frame(results: Path) -> tuple[pd.DataFrame, dict]:
    """One row per analyzed snapshot, and the raw {(run, iteration): result} for the scatter."""
    rows, raw = [], {}
    for d, cfg, _ in runs(results):
        for it, r in load_cache(d).items():
            raw[(d.name, it)] = r
            rows.append({"run": d.name, "algorithm": r["algorithm"], "seed": r["seed"], "iteration": it,
                         "total": r["total_iterations"], "mae": r["mae"], "top1": r["top1"],
                         "random": r["top1_random"], "n_states": r["n_states"], "n_rank": r["n_ranking_states"],
                         "gt_rollouts": r["params"]["gt_rollouts"], "K": r.get("K")})
    return pd.DataFrame(rows), raw


def eval_frame(results: Path, split: str) -> pd.DataFrame:
    """Each evaluation on `split` with the KL of the last training batch before it (0 at iteration 0: the policy
    is the reference) and the training accuracy averaged over the training batches since the previous evaluation."""
    rows = []
    for d, cfg, metrics in runs(results):
        if cfg["algorithm"] == "sft":
            continue
        train, prev = [], 0
        for m in metrics:
            if m.get("kind") == "train":
                train.append(m)
            elif m.get("kind") == "eval" and m.get("split") == split:
                it = m["iteration"]
                # (DPO+ samples once: only its first row has a training accuracy)
                window = [t for t in train if prev < t["iteration"] <= it and "train_reward" in t]
                kl = 0.0 if it == 0 else (train[-1].get("kl") if train else None)
                rows.append({"run": d.name, "algorithm": cfg["algorithm"], "label": cfg.get("label"),
                             "iteration": it, "acc": m["acc"], "kl": kl,
                             "train_acc": np.mean([t["train_reward"] for t in window]) if window else None})
                prev = it
    return pd.DataFrame(rows)


# --- figures ------------------------------------------------------------------------------------------------------
def _by_method(v: pd.DataFrame, col: str):
    for alg in [a for a in ("ppo", "vineppo") if a in set(v.algorithm)]:
        g = v[v.algorithm == alg].dropna(subset=[col]).groupby("iteration")[col]
        yield alg, g.mean(), g.std().fillna(0.0), v[v.algorithm == alg].run.nunique()


def plot_values(v: pd.DataFrame, raw: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for alg, m, s, n in _by_method(v, "mae"):
        ax.plot(m.index, m, marker="o", ms=3, color=COLORS[alg], label=f"{NAMES[alg]} (n={n})")
        ax.fill_between(m.index, m - s, m + s, color=COLORS[alg], alpha=0.2, lw=0)
    ax.set(xlabel="training iteration (snapshot)", ylabel="value MAE vs MC ground truth", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out / "value_mae.png")

    algs = [a for a in ("ppo", "vineppo") if a in set(v.algorithm)]
    fig, axes = plt.subplots(1, len(algs), figsize=(4.2 * len(algs) + 1, 3.8), squeeze=False, layout="constrained")
    for ax, alg in zip(axes[0], algs):
        # Snapshots after iteration 0 (PPO's critic starts from a random head), unless there are no others.
        later = any(it > 0 for (_, it), r in raw.items() if r["algorithm"] == alg)
        pts = [(r["gt"], r["pred"], it / max(r["total_iterations"], 1)) for (_, it), r in raw.items()
               if r["algorithm"] == alg and (it > 0 or not later)]
        gt = np.concatenate([p[0] for p in pts])
        pred = np.concatenate([p[1] for p in pts])
        prog = np.concatenate([[p[2]] * len(p[0]) for p in pts])
        sc = ax.scatter(gt, pred, c=prog, cmap="viridis", vmin=0, vmax=1, s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
        ax.set(title=f"{NAMES[alg]}: MAE {np.abs(pred - gt).mean():.3f} ({len(gt)} states"
                     + (", snapshots > 0)" if later else ")"),
               xlabel="ground-truth value (MC)", ylabel="predicted value", xlim=(-0.05, 1.05))
        ax.title.set_fontsize(9)
    fig.colorbar(sc, ax=axes[0].tolist(), label="training progress (fraction of iterations)")
    fig.savefig(out / "value_calibration.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for alg, m, s, n in _by_method(v, "top1"):
        ax.plot(m.index, m, marker="o", ms=3, color=COLORS[alg], label=f"{NAMES[alg]} (n={n})")
        ax.fill_between(m.index, m - s, m + s, color=COLORS[alg], alpha=0.2, lw=0)
    rnd = v.dropna(subset=["random"]).groupby("iteration").random.mean()
    ax.plot(rnd.index, rnd, color="gray", ls="--", label="random pick (ties counted)")
    ax.axhline(0.2, color="gray", ls=":", lw=1, label="1/5")
    ax.set(xlabel="training iteration (snapshot)", ylabel="top-1 accuracy, ranking next steps", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out / "value_ranking.png")


def plot_xy(e: pd.DataFrame, x: str, xlabel: str, ylabel: str, path: Path, color) -> None:
    """One curve per method: each seed thin, the mean over seeds (per evaluation point) thick."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (lab, g) in enumerate(e.dropna(subset=[x]).groupby("label", sort=False)):
        for _, r in g.groupby("run"):
            ax.plot(r[x], r.acc, color=color(lab, i), lw=0.6, alpha=0.35)
        m = g.groupby("iteration")[[x, "acc"]].mean()
        ax.plot(m[x], m.acc, marker="o", ms=3, color=color(lab, i), label=f"{lab} (n={g.run.nunique()})")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def k_frame(results: Path) -> pd.DataFrame:
    rows = []
    for d, cfg, metrics in runs(results):
        if cfg["algorithm"] != "vineppo":
            continue
        train = [m for m in metrics if m.get("kind") == "train"]
        test = [m for m in metrics if m.get("kind") == "eval" and m.get("split") == "test"
                and m["iteration"] == cfg["train"]["iterations"]]
        if not train or not test:
            warnings.warn(f"skipping {d} in the K ablation: not finished")
            continue
        n = train[-1]["iteration"]
        rows.append({"run": d.name, "K": cfg["algo"]["K"], "acc": test[-1]["acc"], "s_per_it": train[-1]["wall_s"] / n,
                     "mc_s_per_it": sum(t["t_mc_rollouts"] for t in train) / n,
                     "rollouts_per_it": np.mean([t["mc_rollouts"] for t in train]),
                     "tokens_per_it": train[-1]["tokens_generated"] / n})
    return pd.DataFrame(rows)


def plot_k(k: pd.DataFrame, path: Path) -> None:
    g = k.groupby("K")
    Ks = np.array(sorted(k.K.unique()))
    ticks = sorted(set(Ks) | set(PAPER_K["vineppo"]))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 3.4))
    a1.errorbar(Ks, g.acc.mean()[Ks], yerr=g.acc.std().fillna(0)[Ks], marker="o", color=COLORS["vineppo"],
                capsize=3, label="ours: tiny task (test, T=1)")
    a1.set(xscale="log", xlabel="K (MC rollouts per state)", ylabel="final test accuracy")
    pk = sorted(PAPER_K["vineppo"])
    tw = a1.twinx()
    tw.plot(pk, [PAPER_K["vineppo"][x] for x in pk], marker="s", ls="--", color="k", label="paper: 1.1B MATH (%)")
    tw.axhline(PAPER_K["ppo"], color=COLORS["ppo"], ls=":", label=f"paper PPO {PAPER_K['ppo']}")
    tw.set_ylabel("paper test accuracy (%)")
    h = a1.get_legend_handles_labels()
    h2 = tw.get_legend_handles_labels()
    a1.legend(h[0] + h2[0], h[1] + h2[1], fontsize=7, loc="upper left")
    a2.errorbar(Ks, g.s_per_it.mean()[Ks], yerr=g.s_per_it.std().fillna(0)[Ks], marker="o", color="k",
                capsize=3, label="total")
    a2.plot(Ks, g.mc_s_per_it.mean()[Ks], marker="o", color=COLORS["vineppo"], label="MC rollouts")
    a2.set(xscale="log", xlabel="K", ylabel="seconds per iteration")
    a2.legend(fontsize=8)
    # Generated tokens (samples + MC rollouts) do not depend on the machine or its load: the cost in work.
    a3.errorbar(Ks, g.tokens_per_it.mean()[Ks] / 1e3, yerr=g.tokens_per_it.std().fillna(0)[Ks] / 1e3, marker="o",
                color="k", capsize=3)
    a3.set(xscale="log", xlabel="K", ylabel="generated tokens per iteration (k)")
    for ax in (a1, a2, a3):
        ax.minorticks_off()
        ax.set(xticks=ticks, xticklabels=ticks, xlim=(min(ticks) / 1.3, max(ticks) * 1.3))
        ax.grid(alpha=0.3)
    _save(fig, path)


# --- the report ---------------------------------------------------------------------------------------------------
def _final(df: pd.DataFrame, label: str, split: str = "test") -> list[float]:
    d = df[(df.label == label) & (df.split == split) & (df.state == "done")]
    return d[d.iteration == d.total_iterations].acc.tolist()


def _per_seed(v: pd.DataFrame, alg: str, col: str, final: bool = False) -> list[float]:
    """Each seed's `col` averaged over its snapshots after iteration 0 (or at its last snapshot)."""
    out = []
    for _, g in v[(v.algorithm == alg) & (v.iteration > 0)].dropna(subset=[col]).groupby("run"):
        out.append(float(g.sort_values("iteration")[col].iloc[-1]) if final else float(g[col].mean()))
    return out


def value_section(results: Path, L: list[str]) -> dict:
    v, raw = value_frame(results)
    L += ["## Why VinePPO wins: value prediction", ""]
    if v.empty:
        L += ["No value analysis cached: run the sweep with `train.keep_every: N` and "
              f"`python -m harness.analyze values {results}` first.", ""]
        return {}
    plot_values(v, raw, results)
    p = v.iloc[0]
    L += [f"From {v.run.nunique()} runs' weight snapshots ({len(v)} analyzed): held-out responses sampled by each "
          f"snapshot's policy, ground truth = {int(p.gt_rollouts)} MC rollouts per state; PPO = its critic, VinePPO = "
          f"its own K-rollout estimate (K = {', '.join(str(int(k)) for k in sorted(v.K.dropna().unique())) or '–'}) "
          "with fresh seeds. Mean ± SD over seeds; each seed averaged over its snapshots after iteration 0.", "",
          "| method | seeds | MAE (snapshots > 0) | MAE (last snapshot) | MAE (iteration 0) | top-1 ranking | "
          "random pick | states / snapshot | ranking states / snapshot |", "|---|---|---|---|---|---|---|---|---|"]
    out = {}
    for alg in [a for a in ("ppo", "vineppo") if a in set(v.algorithm)]:
        g = v[v.algorithm == alg]
        out[alg] = {"mae": _per_seed(v, alg, "mae"), "top1": _per_seed(v, alg, "top1"),
                    "random": _per_seed(v, alg, "random")}
        L.append(f"| {NAMES[alg]} | {g.run.nunique()} | {_pm(out[alg]['mae'])} | {_pm(_per_seed(v, alg, 'mae', True))}"
                 f" | {_pm(g[g.iteration == 0].mae.tolist())} | {_pm(out[alg]['top1'], 2)} | "
                 f"{_pm(out[alg]['random'], 2)} | {g.n_states.mean():.0f} | {g.n_rank.mean():.1f} |")
    L += ["", "![value MAE](value_mae.png) ![calibration](value_calibration.png) ![ranking](value_ranking.png)", ""]
    if len(out) == 2:
        r = np.mean(out["vineppo"]["mae"]) / np.mean(out["ppo"]["mae"])
        L += [f"- **MAE**: VinePPO {np.mean(out['vineppo']['mae']):.3f} vs PPO {np.mean(out['ppo']['mae']):.3f}: "
              f"VinePPO's error is {r:.2f}x PPO's (paper, {PAPER_VALUES['setting']}: "
              f"{PAPER_VALUES['mae']['vineppo']} vs {PAPER_VALUES['mae']['ppo']}, "
              f"{PAPER_VALUES['mae']['vineppo'] / PAPER_VALUES['mae']['ppo']:.2f}x).",
              f"- **Ranking**: top-1 {np.mean(out['vineppo']['top1']):.2f} (VinePPO) vs "
              f"{np.mean(out['ppo']['top1']):.2f} (PPO); a random pick scores "
              f"{np.mean(out['ppo']['random'] + out['vineppo']['random']):.2f} on the same states (1/5 without GT "
              "ties). Ties: a tied maximum prediction picks uniformly among the tied steps; every GT-best step "
              "counts as right.", ""]
    if "vineppo" in out:    # the error a K-rollout mean has from sampling alone, at the GT values: E|Bin(K, v)/K - v|
        rs = [r for (_, it), r in raw.items() if r["algorithm"] == "vineppo" and it > 0 and r.get("K")]
        noise = [np.mean([sum(math.comb(r["K"], k) * v ** k * (1 - v) ** (r["K"] - k) * abs(k / r["K"] - v)
                              for k in range(r["K"] + 1)) for v in r["gt"]]) for r in rs]
        if noise:
            L += [f"- VinePPO's MAE expected from sampling K rollouts alone (an unbiased estimate): "
                  f"{np.mean(noise):.3f}, measured {np.mean(out['vineppo']['mae']):.3f}.", ""]
    # Error vs position in the chain (paper: PPO's grows with the step index, VinePPO's shrinks), snapshots > 0.
    by_step = {alg: {} for alg in out}
    for r in (r for (_, it), r in raw.items() if it > 0):
        for s, g, p in zip(r["step"], r["gt"], r["pred"]):
            by_step[r["algorithm"]].setdefault(min(s, 8), []).append(abs(p - g))
    steps = sorted({s for d in by_step.values() for s in d})
    if steps:
        L += ["MAE by step index of the state (snapshots > 0; 8 = 8 and later):", "",
              "| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
        L += [f"| {NAMES[a]} | " + " | ".join(_fmt(np.mean(d[s]) if s in d else None) for s in steps) + " |"
              for a, d in by_step.items()] + [""]
    out["ratio"] = (np.mean(out["vineppo"]["mae"]) / np.mean(out["ppo"]["mae"])) if len(out) == 2 else None
    return out


def write(results: Path, df: pd.DataFrame, split: str) -> Path:
    from harness import plot as P
    L = [f"# Reproduction report: `{results}`", "",
         f"Written by `python -m harness.plot {results} --report` from the files the runs wrote; every number "
         "below is computed from them. Wall-clock numbers depend on the machine that ran the sweep.", ""]
    states = df.groupby("run").state.first()
    L += [f"{len(states)} runs with evaluations, {(states == 'done').sum()} done. Curves: {split} split.", "",
          "## Accuracy", "", (results / "table.md").read_text().strip(), "",
          "![](accuracy_vs_iteration.png) ![](accuracy_vs_wallclock.png) ![](accuracy_vs_compute.png)", ""]
    fin = {a: _final(df, a) for a in ("sft", "ppo", "vineppo")}
    for a in ("ppo", "vineppo"):
        if fin[a] and fin["sft"]:
            L.append(f"- {NAMES[a]}: final test accuracy {_pm(fin[a])} (mean ± SD over {len(fin[a])} seeds), "
                     f"{np.mean(fin[a]) - np.mean(fin['sft']):+.3f} over the SFT start ({np.mean(fin['sft']):.3f}).")
    L.append("")
    vals = value_section(results, L)

    e = eval_frame(results, split)
    e = e[e.label.notna()]
    e["label"] = e.label.map(P.display)
    L += ["## KL–accuracy frontier", ""]
    frontier = {}
    if e.kl.notna().any():
        plot_xy(e, "kl", "KL(pi || ref), sequence level, on the policy's samples", f"{split} accuracy",
                results / "kl_frontier.png", lambda lab, i: P.color(lab.split()[0], i))
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
        L.append("")
    L += ["## Train vs test", ""]
    slopes = {}
    if e.train_acc.notna().any():
        plot_xy(e, "train_acc", "training accuracy (sampled episodes since the previous evaluation)",
                f"{split} accuracy", results / "train_vs_test.png", lambda lab, i: P.color(lab.split()[0], i))
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
        L.append("")
    kres = k_section(results, L)
    L += paper_vs_ours(df, fin, vals, frontier, slopes, kres)
    atomic_write(results / "report.md", "\n".join(L) + "\n")
    return results / "report.md"


def k_section(results: Path, L: list[str]) -> dict:
    k = k_frame(results)
    if k.empty or k.K.nunique() < 2:
        return {}
    plot_k(k, results / "k_ablation.png")
    g = k.groupby("K")
    L += ["## K ablation", "", "| K | seeds | final test accuracy | s / iteration | MC rollout s / iteration | "
          f"MC rollouts / iteration | generated tokens / iteration | paper, {PAPER_K['setting']} |",
          "|---|---|---|---|---|---|---|---|"]
    for K, r in g:
        L.append(f"| {K} | {len(r)} | {_pm(r.acc.tolist())} | {_pm(r.s_per_it.tolist(), 1)} | "
                 f"{_pm(r.mc_s_per_it.tolist(), 1)} | {r.rollouts_per_it.mean():.0f} | {r.tokens_per_it.mean():.0f} | "
                 f"{PAPER_K['vineppo'].get(K, '–')} |")
    lo, hi = g.acc.mean().idxmin(), g.acc.mean().idxmax()
    L += ["", "![](k_ablation.png)", "",
          f"- Accuracy: K={hi} best ({g.acc.mean()[hi]:.3f}), K={lo} worst ({g.acc.mean()[lo]:.3f}). Cost: an "
          f"iteration generates {g.tokens_per_it.mean().max() / g.tokens_per_it.mean().min():.1f}x more tokens at "
          f"K={g.tokens_per_it.mean().idxmax()} than at K={g.tokens_per_it.mean().idxmin()} and takes "
          f"{g.s_per_it.mean().max() / g.s_per_it.mean().min():.1f}x the seconds (K={g.s_per_it.mean().idxmax()} vs "
          f"K={g.s_per_it.mean().idxmin()}; seconds depend on the machine and its load when each run ran). "
          f"Paper: {PAPER_K['note']}; PPO {PAPER_K['ppo']}, SFT {PAPER_K['sft']}.", ""]
    return {int(K): float(a) for K, a in g.acc.mean().items()}


def paper_vs_ours(df, fin, vals, frontier, slopes, kres) -> list[str]:
    L = ["## Paper vs ours", "", "| quantity | paper | ours |", "|---|---|---|"]
    gap = (f"{np.mean(fin['vineppo']) - np.mean(fin['ppo']):+.3f} (tiny task, accuracy fraction)"
           if fin["ppo"] and fin["vineppo"] else "–")
    L.append(f"| VinePPO − PPO, final test accuracy | +4.9 pts (1.1B MATH 23.0 vs 18.1), +3.3 (1.1B GSM8K) | {gap} |")
    if vals.get("ppo") and vals.get("vineppo"):
        L.append(f"| value MAE, PPO / VinePPO | {PAPER_VALUES['mae']['ppo']} / {PAPER_VALUES['mae']['vineppo']} "
                 f"({PAPER_VALUES['setting']}) | {np.mean(vals['ppo']['mae']):.3f} / "
                 f"{np.mean(vals['vineppo']['mae']):.3f} (ratio {vals['ratio']:.2f}) |")
        L.append(f"| top-1 ranking of next steps, PPO / VinePPO | {PAPER_VALUES['ranking']} | "
                 f"{np.mean(vals['ppo']['top1']):.2f} / {np.mean(vals['vineppo']['top1']):.2f} (random "
                 f"{np.mean(vals['ppo']['random'] + vals['vineppo']['random']):.2f}) |")
    if kres:
        paper_k = " / ".join(f"K={K} {a}" for K, a in sorted(PAPER_K["vineppo"].items()))
        L.append(f"| K ablation, VinePPO final accuracy | {paper_k} % | "
                 + " / ".join(f"K={K} {a:.3f}" for K, a in sorted(kres.items())) + " |")
    if frontier:
        L.append("| accuracy at equal KL | VinePPO higher at any KL [SEC] | "
                 + ", ".join(f"{k} {a:.3f}" for k, a in frontier.items()) + " |")
    if slopes:
        L.append("| test vs train accuracy slope | VinePPO steepest [SEC] | "
                 + ", ".join(f"{k} {s:.2f}" for k, s in slopes.items()) + " |")
    last = df[(df.state == "done") & (df.iteration > 0)].sort_values("iteration").groupby("run").last()
    t = (last.wall_s / last.iteration).groupby(last.label).mean()
    if "ppo" in t and "vineppo" in t:
        L.append(f"| VinePPO / PPO seconds per iteration | ~5x (1.1B [SEC]) | {t['vineppo'] / t['ppo']:.1f}x |")
    return L + ["", "Paper numbers: `harness/paper_results.yaml`, from the facts file of the "
                "reproduction; [SEC] marks unverified secondary sources."]
