"""Learning curves of the study with seed bands: one mean line and one band per variant.

Only finished runs are read (those with ``final.json``; a run still training would pull the mean
towards its early steps). For every variant the curves of its finished seeds are aligned on the
steps that *all* of them logged, and summarised per step by

- the mean over seeds (the line), and
- a band: ``"minmax"`` (default) spans the lowest and highest seed at that step, so every seed's
  curve lies inside it; ``"sd"`` spans mean ± one standard deviation over seeds (n - 1 in the
  denominator; with one seed the band has no width).

Eval curves (greedy accuracy per split, every ``eval_every`` steps) are not smoothed. Training-step
curves are first smoothed per seed with ``kdrl_mini.runs.plots.smooth`` (a trailing moving average over the
steps where the metric applies: NaN marks a metric that does not apply, e.g. rollout reward for
KD-FKL), then summarised. The untrained student's value (a study's ``untrained.json``) is drawn as a
horizontal line on the eval panels.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..runs.metrics import read_metrics
from ..runs.plots import LABELS, plt, smooth
from ..tasks.files import EVAL_SPLITS

TRAIN_METRICS = ("reward", "exact_kl", "response_length", "entropy")
BANDS = {"minmax": "band: min-max over seeds", "sd": "band: mean ± 1 SD over seeds"}


@dataclass(frozen=True)
class Band:
    """One variant's curve: per step the mean over seeds and the band's low and high edge."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: list[int]
    band: str


def finished_runs(study_dir: str | Path, variant: str) -> dict[int, Path]:
    """seed -> run folder, for the variant's runs that hold ``final.json``."""
    out = {}
    for run in Path(study_dir).glob(f"runs/{variant}/seed*"):
        if (run / "final.json").exists() and run.name[4:].isdigit():
            out[int(run.name[4:])] = run
    return dict(sorted(out.items()))


def summarise(per_seed: dict[int, dict[int, float]], band: str = "minmax") -> Band | None:
    """Mean and band per step over seeds (``per_seed``: seed -> {step: value}), on the steps every
    seed has; None without any seed or common step."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {sorted(BANDS)}, not {band!r}")
    if not per_seed:
        return None
    steps = sorted(set.intersection(*(set(c) for c in per_seed.values())))
    if not steps:
        return None
    mean, low, high = [], [], []
    for s in steps:
        values = [c[s] for c in per_seed.values()]
        m = statistics.fmean(values)
        if band == "minmax":
            lo, hi = min(values), max(values)
        else:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            lo, hi = m - sd, m + sd
        mean.append(m)
        low.append(lo)
        high.append(hi)
    return Band(steps, mean, low, high, sorted(per_seed), band)


def eval_band(study_dir: str | Path, variant: str, split: str, metric: str = "eval_accuracy",
              band: str = "minmax") -> Band | None:
    """Greedy ``metric`` on ``split`` against step over the variant's finished seeds."""
    per_seed = {}
    for seed, run in finished_runs(study_dir, variant).items():
        _, evals = read_metrics(run)
        per_seed[seed] = {e["step"]: e[metric] for e in evals if e["split"] == split and e.get(metric) == e.get(metric)}
    return summarise({s: c for s, c in per_seed.items() if c}, band)


def train_band(study_dir: str | Path, variant: str, metric: str, window: int = 10,
               band: str = "minmax") -> Band | None:
    """A training-row ``metric`` against step, smoothed per seed (trailing window), over finished
    seeds; steps where the metric is NaN (does not apply) are left out before smoothing."""
    per_seed = {}
    for seed, run in finished_runs(study_dir, variant).items():
        steps, _ = read_metrics(run)
        rows = [r for r in steps if metric in r and r[metric] == r[metric]]
        if rows:
            per_seed[seed] = dict(zip((r["step"] for r in rows), smooth([r[metric] for r in rows], window)))
    return summarise(per_seed, band)


def plot_band(curve: Band, ax, label: str, color=None, marker=None):
    """The mean line and the shaded band of one variant."""
    n = len(curve.seeds)
    line, = ax.plot(curve.steps, curve.mean, label=f"{label} ({n} seed{'' if n == 1 else 's'})", color=color,
                    marker=marker, ms=3)
    ax.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(), alpha=0.18, lw=0)
    return line


def _legend(axes):
    """One legend (first panel) with every line of every panel: a variant missing from the first
    panel (KD-FKL has no rollout reward) is still named."""
    seen = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    axes[0].legend(list(seen.values()), list(seen), fontsize=7)


def _colors(variants):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(variants)}


def eval_figure(study_dir: str | Path, variants, splits=EVAL_SPLITS, untrained: dict | None = None,
                band: str = "minmax", metric: str = "eval_accuracy"):
    """One panel per split: every variant's mean greedy accuracy and band; the untrained student's
    value (``untrained[f"{split}_accuracy"]``) as a dashed black line. Variants without a finished
    seed are listed in the title instead."""
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
    colors = _colors(variants)
    key = metric.replace("eval_", "")
    missing = []
    for ax, split in zip(axes[0], splits):
        for v in variants:
            curve = eval_band(study_dir, v, split, metric, band)
            if curve is None:
                missing.append(v)
                continue
            plot_band(curve, ax, v, colors[v], marker="o")
        if untrained and f"{split}_{key}" in untrained:
            ax.axhline(untrained[f"{split}_{key}"], color="black", ls="--", lw=1, label="untrained student")
        ax.set(title=f"{split}", xlabel="training step", ylabel=f"{LABELS.get(metric, metric)}")
        ax.grid(alpha=0.3)
    _legend(axes[0])
    not_yet = sorted(set(missing), key=list(variants).index)
    fig.suptitle(f"Greedy {key} per eval split: mean over finished seeds, {BANDS[band]}"
                 + (f"; no finished run yet: {', '.join(not_yet)}" if not_yet else ""), fontsize=10)
    fig.tight_layout()
    return fig


def train_figure(study_dir: str | Path, variants, metrics=TRAIN_METRICS, window: int = 10, band: str = "minmax"):
    """One panel per training metric (smoothed per seed over ``window`` steps): mean and band."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    colors = _colors(variants)
    for ax, metric in zip(axes[0], metrics):
        for v in variants:
            curve = train_band(study_dir, v, metric, window, band)
            if curve is not None:
                plot_band(curve, ax, v, colors[v])
        ax.set(title=metric, xlabel="training step", ylabel=LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    _legend(axes[0])
    fig.suptitle(f"Training rows, trailing mean over {window} steps per seed, then mean over finished seeds; "
                 f"{BANDS[band]}", fontsize=10)
    fig.tight_layout()
    return fig


def band_width(curve: Band) -> float:
    """Mean width of the band over steps (a quick measure of seed spread)."""
    return statistics.fmean(h - lo for lo, h in zip(curve.low, curve.high)) if curve else math.nan


def forest_plot(judged: dict, claims, out_path: str | Path | None = None):
    """Paired differences of every claim with their Holm-adjusted intervals (``claims.judge_all``),
    one panel per unit: accuracy claims (absolute difference) and length claims (tokens) have their own
    x axis, so a length interval of several tokens does not hide an accuracy interval of a few points."""
    shown = [c for c in claims if "mean" in judged.get(c.name, {})]
    groups = [(unit, [c for c in shown if c.metric.endswith("accuracy") == is_acc])
              for unit, is_acc in (("accuracy difference", True), ("length difference in tokens, shorter > 0", False))]
    groups = [(u, cs) for u, cs in groups if cs] or [("paired difference", [])]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.45 * max(len(shown), 1) + 1.2 * len(groups)),
                             gridspec_kw={"height_ratios": [max(len(cs), 1) for _, cs in groups]}, squeeze=False)
    for ax, (unit, cs) in zip(axes[:, 0], groups):
        for i, c in enumerate(cs):
            j = judged[c.name]
            color = {"reproduced": "tab:green"}.get(j["verdict"], "tab:red" if "reversed" in j["verdict"] else "tab:gray")
            ax.plot([j["low"], j["high"]], [i, i], color=color, lw=2)
            ax.plot([j["mean"]], [i], "o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(cs)))
        ax.set_yticklabels([f"{c.name} {c.text}" for c in cs], fontsize=8)
        ax.set_ylim(len(cs) - 0.5, -0.5)
        ax.set_xlabel(f"{unit} (claimed direction > 0)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    levels = sorted({round(100 * judged[c.name]["level"], 2) for c in shown})
    span = f"{levels[0]:g}%" if len(levels) == 1 else f"{levels[0]:g}-{levels[-1]:g}%" if levels else ""
    what = f"Holm-adjusted intervals at {span} confidence" if levels else "no claim judged yet"
    axes[0, 0].set_title(f"The paper's claims on the tiny world: {what}\n"
                         "(green: reproduced, red: reversed, grey: inconclusive, equivalent or below the SESOI)",
                         fontsize=10)
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=90)
    return fig
