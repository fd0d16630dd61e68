"""Figures read back from run folders' ``metrics.jsonl`` (the CLI and the notebooks share them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    matplotlib.use("Agg")  # files from the CLI; notebooks keep their inline backend
import matplotlib.pyplot as plt

from .metrics import read_metrics

LABELS = {
    "reward": "mean reward of rollouts",
    "exact_kl": "exact KL(student || teacher) per token",
    "kl": "estimated KL per token",
    "response_length": "response length (tokens)",
    "entropy": "policy entropy (nats/token)",
    "beta": "KL coefficient beta",
    "eval_accuracy": "greedy accuracy",
    "eval_length": "greedy response length (tokens)",
}


def smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing moving average (keeps the first points honest: shorter windows there)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_curves(runs: dict[str, str | Path], metric: str, ax=None, window: int = 5, split: str | None = None):
    """One line per run of ``metric`` against step; ``split`` selects eval lines (test/ood)."""
    ax = ax or plt.gca()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, run_dir) in enumerate(runs.items()):
        steps, evals = read_metrics(run_dir)
        lines = [e for e in evals if e["split"] == split] if split else steps
        lines = [l for l in lines if l.get(metric) == l.get(metric) and metric in l]  # NaN: does not apply
        xs = [l["step"] for l in lines]
        ys = [l[metric] for l in lines]
        if xs:  # a run keeps its colour in every panel, even where it has no such metric
            ax.plot(xs, ys if split else smooth(ys, window), marker="o" if split else None, label=label,
                    color=colors[i % len(colors)])
    ax.set_xlabel("training step")
    ax.set_ylabel(LABELS.get(metric, metric) + (f" ({split})" if split else ""))
    ax.set_title(f"{LABELS.get(metric, metric)}{' on ' + split if split else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


TRAIN_PANELS = ("reward", "exact_kl", "response_length", "entropy")


def comparison_figure(runs: dict[str, str | Path], out_path: str | Path | None = None, splits=("test", "ood"),
                      train_metrics=TRAIN_PANELS, baselines: dict[str, dict] | None = None, title: str | None = None):
    """Panels of training curves (``train_metrics``) and greedy accuracy per eval split (``splits``),
    two rows; each of ``baselines`` (name -> ``{split}_accuracy`` numbers, e.g. the untrained student and
    the teacher) is drawn as a horizontal line on the accuracy panels."""
    panels = [(m, None) for m in train_metrics] + [("eval_accuracy", s) for s in splits]
    cols = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 8), squeeze=False)
    for ax, (metric, split) in zip(axes.flat, panels):
        plot_curves(runs, metric, ax, split=split)
        for i, (name, numbers) in enumerate((baselines or {}).items()):
            if split and f"{split}_accuracy" in numbers:
                ax.axhline(numbers[f"{split}_accuracy"], color="gray", ls=("--", ":")[i % 2], lw=1, label=name)
        if split and baselines:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "GRPO vs KD vs KDRL on the tiny world (kd-fkl trains on teacher samples: no rollout "
                 "reward or length of its own, and its KL is measured on the teacher's samples)", fontsize=10)
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=90)
    return fig
