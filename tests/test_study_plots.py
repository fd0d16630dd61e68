"""Seed-band learning curves and the forest plot (kdrl_mini.study.plots): on small synthetic study folders
written in tmp_path, numbers checked against hand computation, runs without final.json left out; and on
the committed study's finished runs, read back by the runner (collect) and the bands alike."""

import json
import math
from pathlib import Path

import pytest

from kdrl_mini.study import plots as study_plots
from kdrl_mini.study import v4
from kdrl_mini.study.claims import Claim
from kdrl_mini.study.runner import collect

NAN = float("nan")


def write_run(root, variant, seed, evals=(), train=(), finished=True, final=None):
    """evals: (step, split, accuracy); train: dicts with "step" and metric values."""
    run = root / "runs" / variant / f"seed{seed}"
    run.mkdir(parents=True)
    lines = [json.dumps({"kind": "train", **row}) for row in train]
    lines += [json.dumps({"kind": "eval", "step": s, "split": sp, "eval_accuracy": a, "eval_length": 40.0})
              for s, sp, a in evals]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run / "final.json").write_text(json.dumps({"variant": variant, "seed": seed, **(final or {})}))
    return run


@pytest.fixture
def folder(tmp_path):
    """grpo: seeds 1, 2, 3 finished, seed 4 still training with wild values."""
    acc = {1: (0.10, 0.20), 2: (0.30, 0.40), 3: (0.20, 0.60)}   # test accuracy at steps 15, 30
    rewards = {1: [0.0, 1.0, 0.5], 2: [1.0, 1.0, 1.0], 3: [0.5, 0.0, NAN]}
    for seed in (1, 2, 3):
        write_run(tmp_path, "grpo", seed,
                  evals=[(15, "test", acc[seed][0]), (30, "test", acc[seed][1]), (15, "ood", 0.0)],
                  train=[{"step": i + 1, "reward": r} for i, r in enumerate(rewards[seed])])
    write_run(tmp_path, "grpo", 4, evals=[(15, "test", 0.99), (30, "test", 0.99)],
              train=[{"step": 1, "reward": 9.0}], finished=False)
    return tmp_path


def test_only_runs_with_final_json_are_read(folder):
    assert list(study_plots.finished_runs(folder, "grpo")) == [1, 2, 3]
    assert study_plots.finished_runs(folder, "kdrl") == {}
    assert study_plots.eval_band(folder, "kdrl", "test") is None


def test_eval_band_minmax_by_hand(folder):
    c = study_plots.eval_band(folder, "grpo", "test")
    assert c.steps == [15, 30] and c.seeds == [1, 2, 3] and c.band == "minmax"
    assert c.mean == pytest.approx([0.2, 0.4])            # (0.1+0.3+0.2)/3, (0.2+0.4+0.6)/3
    assert c.low == pytest.approx([0.1, 0.2])
    assert c.high == pytest.approx([0.3, 0.6])            # seed 4's 0.99 would be the max if it were read


def test_eval_band_sd_by_hand(folder):
    c = study_plots.eval_band(folder, "grpo", "test", band="sd")
    sd15 = math.sqrt(((0.1 - 0.2) ** 2 + (0.3 - 0.2) ** 2 + 0) / 2)   # 0.1
    sd30 = math.sqrt(((0.2 - 0.4) ** 2 + 0 + (0.6 - 0.4) ** 2) / 2)   # 0.2
    assert c.low == pytest.approx([0.2 - sd15, 0.4 - sd30])
    assert c.high == pytest.approx([0.2 + sd15, 0.4 + sd30])
    assert study_plots.band_width(c) == pytest.approx(sd15 + sd30)   # mean of 2*sd15 and 2*sd30


def test_train_band_smooths_each_seed_then_averages(folder):
    c = study_plots.train_band(folder, "grpo", "reward", window=2)
    # trailing mean over 2 steps per seed: seed1 [0, .5, .75], seed2 [1, 1, 1], seed3 [.5, .25] (step 3 is NaN)
    assert c.steps == [1, 2]                                 # steps every finished seed has
    assert c.mean == pytest.approx([0.5, (0.5 + 1 + 0.25) / 3])
    assert c.low == pytest.approx([0.0, 0.25])
    assert c.high == pytest.approx([1.0, 1.0])


def test_a_single_seed_has_no_band_width(tmp_path):
    write_run(tmp_path, "kdrl", 1, evals=[(15, "test", 0.3)])
    c = study_plots.eval_band(tmp_path, "kdrl", "test", band="sd")
    assert c.mean == c.low == c.high == [0.3]
    with pytest.raises(ValueError, match="band"):
        study_plots.summarise({1: {1: 0.0}}, band="iqr")


def test_eval_figure_draws_the_untrained_line_and_names_missing_variants(folder):
    fig = study_plots.eval_figure(folder, ["grpo", "kdrl"], splits=("test", "ood"), untrained={"test_accuracy": 0.187})
    test_ax = fig.axes[0]
    flat = [l for l in test_ax.get_lines() if list(l.get_ydata()) == [0.187, 0.187]]
    assert len(flat) == 1 and flat[0].get_label() == "untrained student"
    assert "no finished run yet: kdrl" in fig._suptitle.get_text()
    assert "min-max" in fig._suptitle.get_text()
    means = [l for l in test_ax.get_lines() if l.get_label().startswith("grpo")]
    assert list(means[0].get_ydata()) == pytest.approx([0.2, 0.4]) and "3 seeds" in means[0].get_label()
    study_plots.plt.close(fig)


def test_train_figure_legend_names_a_variant_absent_from_the_first_panel(folder):
    write_run(folder, "kd-fkl", 1, train=[{"step": 1, "reward": NAN, "entropy": 0.2}])
    fig = study_plots.train_figure(folder, ["grpo", "kd-fkl"], metrics=("reward", "entropy"), window=2)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["grpo (3 seeds)", "kd-fkl (1 seed)"]
    assert [l.get_label() for l in fig.axes[0].get_lines()] == ["grpo (3 seeds)"]   # no reward line for kd-fkl
    study_plots.plt.close(fig)


def test_forest_plot_gives_length_claims_their_own_axis():
    """Accuracy and length claims in separate panels, intervals drawn whole (a length CI of tens of
    tokens was once clipped to [-1, 1] on the accuracy axis)."""
    claims = [Claim("A", "acc", "s", "x", "y"), Claim("L", "len", "s", "x", "y", metric="test_length", higher=False)]
    judged = {"A": {"mean": 0.05, "low": 0.01, "high": 0.09, "verdict": "reproduced", "level": 0.975},
              "L": {"mean": 4.4, "low": -5.7, "high": 14.5, "verdict": "inconclusive", "level": 0.95}}
    fig = study_plots.forest_plot(judged, claims)
    assert "at 95-97.5% confidence" in fig.axes[0].get_title()  # the levels it draws, not a blanket "95%"
    acc_ax, len_ax = fig.axes
    assert [t.get_text() for t in acc_ax.get_yticklabels()] == ["A acc"]
    assert [t.get_text() for t in len_ax.get_yticklabels()] == ["L len"]
    assert list(len_ax.lines[0].get_xdata()) == [-5.7, 14.5]
    assert list(acc_ax.lines[0].get_xdata()) == [0.01, 0.09]


STUDY = Path(__file__).resolve().parents[1] / v4.STUDY_DIR  # the committed study
FINALS = sorted(STUDY.glob("runs/grpo/seed*/final.json"))


@pytest.mark.skipif(not FINALS, reason="no finished run of the committed study")
def test_the_committed_runs_are_read_back_alike_by_collect_and_the_bands():
    """Every record names its own run folder; the last point of a variant's eval band is the 1,000-row
    final evaluation its runs' final.json summarise (mean, lowest and highest seed)."""
    records = collect(STUDY)
    finals = sorted(STUDY.glob("runs/*/seed*/final.json"))
    assert [(r["variant"], r["seed"]) for r in records] == [(f.parent.parent.name, int(f.parent.name[4:]))
                                                              for f in finals]
    grpo = [r for r in records if r["variant"] == "grpo"]
    assert list(study_plots.finished_runs(STUDY, "grpo")) == sorted(r["seed"] for r in grpo)
    split = f"mix@{v4.BUDGET}"
    band = study_plots.eval_band(STUDY, "grpo", split)
    final = [r[f"{split}_accuracy"] for r in grpo]
    assert band.seeds == sorted(r["seed"] for r in grpo) and band.steps[-1] == v4.BASE["max_steps"]
    assert (band.mean[-1], band.low[-1], band.high[-1]) == pytest.approx((sum(final) / len(final), min(final),
                                                                          max(final)))
