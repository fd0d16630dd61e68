"""Study v4's two figures, drawn from finished runs' ``final.json`` records and the two baselines.

- The budget figure: each arm's accuracy at 48 tokens against the decision budget (64) on mix, test and
  blind, so what the 48-token budget did to v3's verdicts is measured, not asserted.
- The beta curve: KDRL's accuracy on mix, test and blind and its probe KL to the teacher against beta,
  from beta = 0 (GRPO) to a KD-dominated beta, every seed a dot and the mean a line, with KD-RKL (the
  KD-only end), the untrained student and the teacher as horizontal lines.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..runs.plots import plt
from .v4_claims import mean_of

SPLITS = ("mix", "test", "blind")


def budget_figure(records: list[dict], baselines: dict[str, dict], arms: list[str], out_path: str | Path | None = None,
                  budgets: tuple[int, int] = (48, 64)):
    """One panel per split: per arm (and baseline) the mean accuracy at each budget, joined by a line."""
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4.2 * len(SPLITS), 4), sharey=True)
    rows = [(name, lambda k, b=b: b[k]) for name, b in baselines.items()]
    rows += [(arm, lambda k, a=arm: mean_of(records, a, k)) for arm in arms]
    for ax, split in zip(axes, SPLITS):
        for i, (name, value) in enumerate(rows):
            ys = [value(f"{split}@{b}_accuracy") for b in budgets]
            style = "--" if name in baselines else "-"
            ax.plot(budgets, ys, style, marker="o", color=f"C{i}", label=name)
        ax.set_xticks(budgets)
        ax.set_xlabel("new-token budget of the greedy answer")
        ax.set_title(split)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("greedy accuracy (1,000 rows)")
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle("Accuracy at 48 tokens and at the decision budget (64): what the short budget hides")
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=90)
    return fig


def beta_curve(records: list[dict], baselines: dict[str, dict], curve: dict[str, float], kd_only: str = "kd-rkl",
               budget: int = 64, out_path: str | Path | None = None):
    """``curve``: arm -> its beta (GRPO at 0). Panels: accuracy on mix, test, blind at ``budget``, and the
    probe KL to the teacher, against beta on a symlog axis (0 shown)."""
    keys = [f"{s}@{budget}_accuracy" for s in SPLITS] + ["probe_kl"]
    titles = [f"{s}@{budget} accuracy" for s in SPLITS] + ["KL(student || teacher) on the probe set"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4))
    betas = sorted(set(curve.values()))
    low = min([b for b in betas if b > 0], default=1.0)
    for ax, key, title in zip(axes, keys, titles):
        for arm, beta in curve.items():
            ys = [r[key] for r in records if r["variant"] == arm and r.get(key) == r.get(key)]
            ax.plot([beta] * len(ys), ys, "o", color="C0", alpha=0.4, ms=4)
        means = [statistics.fmean([mean_of(records, a, key) for a, b in curve.items() if b == beta]) for beta in betas]
        ax.plot(betas, means, "-", color="C0", lw=2, label="KDRL (mean; dots: seeds)")
        for i, (name, value) in enumerate([(f"{kd_only} (KD only)", mean_of(records, kd_only, key))]
                                           + [(n, b.get(key, float("nan"))) for n, b in baselines.items()]):
            ax.axhline(value, ls=":" if i else "--", color=f"C{i + 1}", label=name)
        ax.set_xscale("symlog", linthresh=low)
        ax.set_xlim(-low / 3, max(betas) * 1.5)
        ax.set_xticks(betas, [f"{b:g}" for b in betas], fontsize=7)
        ax.set_xlabel("beta (0 = GRPO)")
        ax.set_ylabel("nats per token" if key == "probe_kl" else "greedy accuracy (1,000 rows)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("The beta curve: does some beta make joint KD + RL beat both ends?")
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=90)
    return fig
