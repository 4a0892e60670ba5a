"""Regenerate figures and tables from what runs wrote (config.yaml + metrics.jsonl), nothing else.

    python -m harness.plot results/tiny

writes into the results directory:
  results.csv                  tidy: one row per run x evaluation point
  table.md                     per method: final test accuracy (mean +- 95% CI over seeds), greedy accuracy,
                               grad steps and wall-clock to reach PPO's best validation accuracy
  accuracy_vs_iteration.png    accuracy vs training iteration       (mean line, band = +-1 SD over seeds)
  accuracy_vs_wallclock.png    accuracy vs training wall-clock seconds (evaluation excluded)
  accuracy_vs_compute.png      accuracy vs estimated training FLOPs (2N per inference token, 6N per trained token)
  --report                     also report.md and the analysis figures (see harness/report.py)
Runs are told apart by their whole config but the seed (a grid's points are separate rows, never seeds of one);
every run left out of the table or the curves is named with the reason, on stderr and at the end of table.md.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from harness.metrics import read_json, read_jsonl  # noqa: E402

# The paper's column order (Table 1), then the v2 baselines; anything else follows alphabetically.
ORDER = ["sft", "restem", "dpo", "ppo", "vineppo", "grpo", "rloo"]
NAMES = {"sft": "SFT", "restem": "RestEM", "dpo": "DPO+", "ppo": "PPO", "vineppo": "VinePPO", "grpo": "GRPO",
         "rloo": "RLOO"}
COLORS = {"sft": "#7f7f7f", "restem": "#8c564b", "dpo": "#9467bd", "ppo": "#1f77b4", "vineppo": "#d62728",
          "grpo": "#2ca02c", "rloo": "#ff7f0e"}
FAMILY = ("ppo", "vineppo", "grpo", "rloo")     # one batch of prompts x samples per iteration: budgets comparable
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


@functools.cache
def paper_results() -> dict:
    """The paper's numbers (harness/paper_results.yaml), read by this table and by harness/report.py."""
    return yaml.safe_load((Path(__file__).parent / "paper_results.yaml").read_text())


def paper_setting(cfg: dict, results: Path | None = None) -> str | None:
    """"<model> <task>" (e.g. "rho-1.1b math") when a run is in a setting of the paper's Table 1, else None. A run
    started from another run of the sweep (model.init_run) takes that run's model."""
    model = cfg.get("model") or {}
    if model.get("init_run") and results is not None:
        parent = results / model["init_run"] / "config.yaml"
        return paper_setting(yaml.safe_load(parent.read_text()), results) if parent.exists() else None
    src = " ".join(str(model.get(k) or "") for k in ("hub", "path", "gguf_file")).lower()
    task = (cfg.get("task") or {}).get("name")
    for key, needles in paper_results()["models"].items():
        if any(n in src for n in needles) and task in paper_results()["table1"][key]:
            return f"{key} {task}"
    return None


def paper_value(setting: str | None, algorithm: str) -> float | None:
    if not setting:
        return None
    model, task = setting.split()
    return paper_results()["table1"][model][task].get(algorithm)


def load(results: Path) -> pd.DataFrame:
    """One row per run x evaluation. Runs are told apart by their whole config but the seed: runs sharing a label
    whose configs differ (a grid) get the differing values in their label (`ppo-lr=0.001`), never merged as seeds.
    Every run left out of the table or the curves is said why, on stderr and in df.attrs["left_out"]."""
    runs, notes = [], []
    for d in sorted(p for p in results.iterdir() if p.is_dir() and (p / "config.yaml").exists()):
        try:
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            if not isinstance(cfg, dict):
                raise ValueError("config.yaml is not a mapping")
        except (OSError, yaml.YAMLError, ValueError) as e:
            notes.append(f"{d.name}: unreadable config.yaml ({e}): left out")
            continue
        bad: list[int] = []
        metrics = read_jsonl(d / "metrics.jsonl", bad)
        status = read_json(d / "status.json", {}) or {}
        state = status.get("state")
        if bad:
            notes.append(f"{d.name}: metrics.jsonl line {', '.join(map(str, bad))} unreadable (skipped)")
        if state in ("failed", "blocked"):
            notes.append(f"{d.name}: {state} ({status.get('error') or 'no error recorded'}): left out")
            continue
        evals = [m for m in metrics if m.get("kind") == "eval"]
        if not evals:
            notes.append(f"{d.name}: no evaluation rows: left out")
            continue
        last = max(m.get("iteration") or 0 for m in evals)
        total = (cfg.get("train") or {}).get("iterations")
        if state is None:
            notes.append(f"{d.name}: no state in status.json: in the curves, not in the table")
        elif state != "done":
            notes.append(f"{d.name}: {state} at iteration {last}: in the curves, not in the table")
        else:
            finals = (cfg.get("eval") or {}).get("final_splits", ["test"])
            missing = [sp for sp in finals if not any(m.get("split") == sp and m.get("iteration") == total
                                                      for m in evals)]
            if missing:
                notes.append(f"{d.name}: done, but has no {'/'.join(missing)} evaluation at its last iteration "
                             f"({total}; damaged metrics.jsonl?): in the curves, not in the table")
        warn = [m for m in metrics if m.get("kind") == "warning"]
        if warn:
            notes.append(f"{d.name}: {len(warn)} warning(s), first: {warn[0].get('message')}")
        runs.append((d, cfg, metrics, state or "unknown"))
    labels = config_labels({d.name: cfg for d, cfg, _, _ in runs})
    rows = []
    for d, cfg, metrics, state in runs:
        setting = paper_setting(cfg, results)
        extra = {"eval_cli_acc": (read_json(d / "eval_test.json", {}) or {}).get("acc"),
                 "lm_eval_acc": (read_json(d / "lm_eval.json", {}) or {}).get("acc")}
        last_train: dict = {}
        for m in metrics:
            if m.get("kind") == "train":
                last_train = m
            elif m.get("kind") == "eval":
                rows.append({"run": d.name, "algorithm": cfg.get("algorithm"), "label": labels[d.name],
                             "group": cfg.get("group"), "seed": cfg.get("seed"), "state": state,
                             "setting": setting, **extra,
                             "total_iterations": cfg.get("train", {}).get("iterations"),
                             "episodes": (m.get("iteration") or 0) * _episodes_per_iteration(cfg),
                             "kl": last_train.get("kl"), "train_reward": last_train.get("train_reward"),
                             **{k: m.get(k) for k in ("iteration", "grad_steps", "wall_s", "flops", "device_s",
                                                      "tokens_generated", "split", "acc", "acc_greedy",
                                                      "pass_at_n", "n_problems", "samples", "temperature")}})
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    df = pd.DataFrame(rows)
    df.attrs["left_out"] = notes
    return df


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_labels(cfgs: dict[str, dict]) -> dict[str, str]:
    """Run name -> its label, plus `-key=value` for every config value (seed aside) that differs between the runs
    sharing that label, so that only seeds of one config are ever averaged together."""
    flat = {n: _flat({k: v for k, v in c.items() if k != "seed"}) for n, c in cfgs.items()}
    by_label: dict[str, list[str]] = {}
    for n, c in cfgs.items():
        by_label.setdefault(str(c.get("label") or c.get("algorithm")), []).append(n)
    out = {}
    for lab, names in by_label.items():
        keys = sorted({k for n in names for k in flat[n]})
        differ = [k for k in keys if len({repr(flat[n].get(k)) for n in names}) > 1]
        for n in names:
            out[n] = lab + "".join(f"-{k.split('.')[-1]}={_value(flat[n].get(k))}" for k in differ)
    return out


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _episodes_per_iteration(cfg: dict) -> float:
    """Responses sampled and trained on per iteration: prompts x samples for the PPO family, NaN for the others
    (DPO+ samples once, RestEM fine-tunes on a filtered set)."""
    t = cfg.get("train") or {}
    if cfg.get("algorithm") not in FAMILY:
        return float("nan")
    return float(t.get("prompts_per_iteration", 0) * t.get("samples_per_prompt", 0))


def label_order(labels) -> list[str]:
    def key(lab):
        base = lab.split("-")[0].lower()
        return (ORDER.index(base) if base in ORDER else len(ORDER), lab)
    return sorted(set(labels), key=key)


def display(label: str) -> str:
    base, _, rest = label.partition("-")
    return NAMES.get(base.lower(), base) + (f" {rest}" if rest else "")


def color(label: str, i: int) -> str:
    return COLORS.get(label.split("-")[0].lower(), plt.get_cmap("tab10")(i % 10))


def ci95(x) -> float:
    x = np.asarray(x, dtype=float)
    return T95.get(len(x) - 1, 1.96) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")


def curve(df: pd.DataFrame, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and SD over seeds on a common x grid (runs are interpolated where their x values differ)."""
    runs = [g.sort_values(x) for _, g in df.groupby("run")]
    xs = np.unique(np.concatenate([g[x].to_numpy(float) for g in runs]))
    xs = xs[xs <= min(g[x].max() for g in runs)]
    ys = np.array([np.interp(xs, g[x].to_numpy(float), g["acc"].to_numpy(float)) for g in runs])
    return xs, ys.mean(0), ys.std(0)


def plot_axis(df: pd.DataFrame, split: str, x: str, xlabel: str, path: Path, logx: bool = False) -> None:
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def final_rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Each finished run's evaluation at its last iteration on `split`."""
    d = df[(df.split == split) & (df.state == "done")]
    return d[d.iteration == d.total_iterations]


def table(df: pd.DataFrame) -> str:
    """The results table; a sweep covering several settings (model x task) gets one table per setting, and a
    setting of the paper's Table 1 a `paper` column (test %, harness/paper_results.yaml)."""
    left = df.attrs.get("left_out") or []
    tail = ("\n**Runs left out, incomplete or with warnings:**\n\n" + "".join(f"- {n}\n" for n in left)) if left else ""
    if "setting" not in df:
        return _table(df, None) + tail
    settings = sorted({s for s in df.setting if s})
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
    ext = [c for c, name in (("eval_cli_acc", "harness.evaluate test"), ("lm_eval_acc", "lm-eval test"))
           if c in test and test[c].notna().any()]
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
            hits = []
            if g.algorithm.iloc[0] != "sft":
                for rid in g.run:
                    v = val[(val.run == rid) & (val.acc >= target - 1e-12)].sort_values("iteration")
                    if len(v):
                        hits.append((v.grad_steps.iloc[0], v.wall_s.iloc[0]))
            n = g.run.nunique()
            if g.algorithm.iloc[0] == "sft":
                row += " – | – |"
            elif hits:
                row += f" {np.mean([h[0] for h in hits]):.0f} ({len(hits)}/{n} seeds) | {np.mean([h[1] for h in hits]):.0f} |"
            else:
                row += f" not reached (0/{n}) | – |"
        for c in ext:
            row += f" {g[c].mean():.3f} |"
        if setting:
            pv = paper_value(setting, g.algorithm.iloc[0])
            row += f" {pv} |" if pv is not None else " – |"
        lines.append(row.replace("± nan", "").replace("nan", "–"))
    notes = ["", "Test accuracy: each run's evaluation after its last iteration; CI = t-interval over seeds. "
                 "Wall-clock excludes evaluation. `vs start`: mean minus the SFT start's test accuracy, marked "
                 "*within noise* when below twice its standard error (the start's binomial error and the spread "
                 "over seeds): such a method has not measurably learned."]
    return "\n".join(lines + notes) + "\n" + budget_table(df)


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results directory, e.g. results/tiny")
    p.add_argument("--split", default=None, help="split for the curves (default: the one evaluated most often)")
    p.add_argument("--report", action="store_true", help="also write report.md with the value analysis, KL and "
                                                         "train-vs-test figures, K ablation, paper vs ours "
                                                         "(harness/report.py)")
    a = p.parse_args(argv)
    results = Path(a.results)
    if not results.is_dir():
        print(f"error: {results} is not a directory", file=sys.stderr)
        return 2
    df = load(results)
    if df.empty:
        print(f"error: no run in {results} has evaluation rows", file=sys.stderr)
        return 2
    df.to_csv(results / "results.csv", index=False)
    rl = df[df.algorithm != "sft"]
    split = a.split or (rl if len(rl) else df).split.value_counts().idxmax()   # an SFT-only sweep plots too
    plot_axis(df, split, "iteration", "training iteration", results / "accuracy_vs_iteration.png")
    plot_axis(df, split, "wall_s", "training wall-clock (s, evaluation excluded)",
              results / "accuracy_vs_wallclock.png")
    plot_axis(df, split, "flops", "estimated training FLOPs (2N/inference token + 6N/trained token)",
              results / "accuracy_vs_compute.png", logx=True)
    md = table(df)
    (results / "table.md").write_text(md)
    print(md)
    print(f"wrote results.csv, table.md and 3 figures ({split} curves) to {results}")
    if a.report:
        from harness import report
        print(f"wrote {report.write(results, df, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
