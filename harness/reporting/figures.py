"""Every figure of table.md and report.md: a frame of harness/reporting/runs.py in, a PNG out."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")                          # files only: no display, also on a machine without one
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.reporting.style import COLORS, NAMES, color, display, label_order  # noqa: E402

VALUE_METHODS = ("ppo", "vineppo")             # the value analysis compares PPO's critic with VinePPO's MC estimate


def save(fig, path: Path, dpi: int = 90) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# --- accuracy (table.md) -------------------------------------------------------------------------------------------
def curve(df: pd.DataFrame, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and SD over seeds on a common x grid (runs are interpolated where their x values differ)."""
    runs = [g.sort_values(x) for _, g in df.groupby("run")]
    xs = np.unique(np.concatenate([g[x].to_numpy(float) for g in runs]))
    xs = xs[xs <= min(g[x].max() for g in runs)]
    ys = np.array([np.interp(xs, g[x].to_numpy(float), g["acc"].to_numpy(float)) for g in runs])
    return xs, ys.mean(0), ys.std(0)


def plot_axis(df: pd.DataFrame, split: str, x: str, xlabel: str, path: Path, logx: bool = False) -> None:
    """Accuracy on `split` against x, one curve per label (mean line, band = +-1 SD over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    d = df[df.split == split]
    for i, lab in enumerate(label_order(d.label)):
        g = d[d.label == lab]
        if g.algorithm.iloc[0] == "sft":           # the start point of every RL method: a reference line
            ax.axhline(g[g.iteration == g.iteration.max()].acc.mean(), color=color(lab, i), ls="--", lw=1,
                       label=f"{display(lab)} (start)")
            continue
        xs, m, s = curve(g, x)
        n = g.run.nunique()
        ax.plot(xs, m, color=color(lab, i), label=f"{display(lab)} (n={n})", marker="o", ms=3)
        ax.fill_between(xs, m - s, m + s, color=color(lab, i), alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("symlog", linthresh=max(1.0, float(d[d[x] > 0][x].min() or 1)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{split} accuracy (mean over samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path, dpi=110)


# --- value analysis (report.md) ------------------------------------------------------------------------------------
def _by_method(v: pd.DataFrame, col: str):
    for alg in [a for a in VALUE_METHODS if a in set(v.algorithm)]:
        g = v[v.algorithm == alg].dropna(subset=[col]).groupby("iteration")[col]
        yield alg, g.mean(), g.std().fillna(0.0), v[v.algorithm == alg].run.nunique()


def plot_values(v: pd.DataFrame, raw: dict, out: Path, alternatives: int) -> None:
    """value_mae.png, value_calibration.png and value_ranking.png (a random pick among `alternatives` marked)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for alg, m, s, n in _by_method(v, "mae"):
        ax.plot(m.index, m, marker="o", ms=3, color=COLORS[alg], label=f"{NAMES[alg]} (n={n})")
        ax.fill_between(m.index, m - s, m + s, color=COLORS[alg], alpha=0.2, lw=0)
    ax.set(xlabel="training iteration (snapshot)", ylabel="value MAE vs MC ground truth", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out / "value_mae.png")

    algs = [a for a in VALUE_METHODS if a in set(v.algorithm)]
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
    fig.savefig(out / "value_calibration.png", dpi=90)     # constrained layout: no tight_layout
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for alg, m, s, n in _by_method(v, "top1"):
        ax.plot(m.index, m, marker="o", ms=3, color=COLORS[alg], label=f"{NAMES[alg]} (n={n})")
        ax.fill_between(m.index, m - s, m + s, color=COLORS[alg], alpha=0.2, lw=0)
    rnd = v.dropna(subset=["random"]).groupby("iteration").random.mean()
    ax.plot(rnd.index, rnd, color="gray", ls="--", label="random pick (ties counted)")
    ax.axhline(1 / alternatives, color="gray", ls=":", lw=1, label=f"1/{alternatives}")
    ax.set(xlabel="training iteration (snapshot)", ylabel="top-1 accuracy, ranking next steps", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out / "value_ranking.png")


# --- KL frontier, train vs test, K ablation (report.md) ------------------------------------------------------------
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
    save(fig, path)


def plot_k(k: pd.DataFrame, paper_k: dict, path: Path) -> None:
    """Final accuracy (with the paper's, on a twin axis), seconds and generated tokens per iteration against K."""
    g = k.groupby("K")
    Ks = np.array(sorted(k.K.unique()))
    ticks = sorted(set(Ks) | set(paper_k["vineppo"]))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 3.4))
    a1.errorbar(Ks, g.acc.mean()[Ks], yerr=g.acc.std().fillna(0)[Ks], marker="o", color=COLORS["vineppo"],
                capsize=3, label="ours: tiny task (test, T=1)")
    a1.set(xscale="log", xlabel="K (MC rollouts per state)", ylabel="final test accuracy")
    pk = sorted(paper_k["vineppo"])
    tw = a1.twinx()
    tw.plot(pk, [paper_k["vineppo"][x] for x in pk], marker="s", ls="--", color="k",
            label=f"paper: {paper_k['label']} (%)")
    tw.axhline(paper_k["ppo"], color=COLORS["ppo"], ls=":", label=f"paper PPO {paper_k['ppo']}")
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
    save(fig, path)
