"""Seed-band learning curves (kdrl_mini.study_plots) and the study's progress (kdrl_mini.study_status),
on small synthetic study folders written in tmp_path: numbers checked against hand computation,
runs without final.json left out."""

import json
import math
import statistics

import pytest

from kdrl_mini.study import reproduction
from kdrl_mini.study import plots as study_plots
from kdrl_mini.study import status as study_status
from kdrl_mini.study.claims import Claim

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


def test_run_status_finished_started_not_started(folder):
    rows = study_status.run_status(folder, {"grpo": [1, 2, 3, 4, 5]})
    states = {r["seed"]: (r["state"], r["step"]) for r in rows}
    assert states == {1: ("finished", 3), 2: ("finished", 3), 3: ("finished", 3), 4: ("started", 1),
                      5: ("not started", 0)}
    assert study_status.finished_seeds(rows) == {"grpo": [1, 2, 3]}
    assert study_status.complete_variants(rows) == []
    table = study_status.status_table(rows, max_steps=150)
    assert "| grpo | 5 | 1, 2, 3 | 4 (1/150) | 5 |" in table


def test_default_plan_is_the_preregistered_one():
    plan = study_status.planned_seeds()
    assert plan["grpo"] == reproduction.CORE_SEEDS and plan["kdrl-k3"] == reproduction.AXIS_SEEDS
    assert len(plan) == 12 and sum(map(len, plan.values())) == 52


# ---------------------------------------------------------------- claims while runs are pending
CLAIMS = (Claim("A", "x beats y", "", "x", "y"), Claim("B", "x beats z", "", "x", "z"),
          Claim("L", "x is shorter than y", "", "x", "y", metric="test_length", higher=False))


def records(variants, seeds=(1, 2, 3, 4)):
    base = {"x": 0.50, "y": 0.30, "z": 0.49}
    noise = [0.01, -0.01, 0.02, 0.0]
    return [{"variant": v, "seed": s, "test_accuracy": base[v] + noise[s - 1] * (v != "x"),
             "test_length": 40.0 + (v != "x") * 10 + noise[s - 1]}
            for v in variants for s in seeds]


def status(done: dict, plan=(1, 2, 3, 4)):
    return [{"variant": v, "seed": s, "state": "finished" if s in done.get(v, ()) else "started", "step": 1}
            for v in ("x", "y", "z") for s in plan]


def test_a_claim_with_missing_runs_is_pending_not_judged():
    st = status({"x": (1, 2, 3, 4), "y": (1, 2, 3, 4), "z": (1, 2)})
    recs = records("xy") + records("z", (1, 2))
    cs = study_status.claim_status(st, CLAIMS)
    assert cs["A"] == {"complete": True, "paired": 4, "planned": 4}
    assert cs["B"] == {"complete": False, "paired": 2, "planned": 4}
    judged = study_status.provisional_claims(recs, st, CLAIMS)
    assert judged["B"]["verdict"] == "pending" and "mean" not in judged["B"]
    assert judged["A"]["verdict"] == "reproduced" and not judged["A"]["family_complete"]
    # judge_all itself would judge B on its two seeds: the provisional view must not
    assert reproduction.judge_all(recs, CLAIMS)["B"]["verdict"] != "pending"
    table = study_status.provisional_table(judged, CLAIMS)
    assert "| B | x beats z | 2 / 4 | — | pending | pending: runs missing |" in table


def test_when_every_run_is_finished_it_is_the_preregistered_analysis():
    st = status({v: (1, 2, 3, 4) for v in "xyz"})
    recs = records("xyz")
    judged = study_status.provisional_claims(recs, st, CLAIMS)
    official = reproduction.judge_all(recs, CLAIMS)
    for name in ("A", "B", "L"):
        assert judged[name]["verdict"] == official[name]["verdict"]
        assert judged[name]["low"] == official[name]["low"] and judged[name]["family_complete"]
    assert "no: final" in study_status.provisional_table(judged, CLAIMS)


def test_settled_means_the_same_verdict_at_both_ends_of_holm():
    claim = CLAIMS[0]
    clear = records("xy")                        # +0.2 with tiny noise: reproduced at every level
    b = study_status.verdict_bounds(claim, clear, family_size=9)
    assert b == {"strict": "reproduced", "loose": "reproduced", "settled": True}
    # mean 0.05, SD 0.018 over 4 seeds: the 95% interval excludes 0, the 1 - 0.05/9 one does not
    diffs = [0.04, 0.06, 0.03, 0.07]
    edge = [{"variant": "x", "seed": s, "test_accuracy": 0.5 + d} for s, d in zip((1, 2, 3, 4), diffs)]
    edge += [{"variant": "y", "seed": s, "test_accuracy": 0.5} for s in (1, 2, 3, 4)]
    b = study_status.verdict_bounds(claim, edge, family_size=9)
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    assert m - 3.182 * sd / 2 > 0                  # the unadjusted 95% interval lies above 0 ...
    assert b["loose"] == "reproduced" and b["strict"] == "inconclusive" and not b["settled"]  # ... the strictest not


def test_claim_power_uses_the_observed_sd():
    from kdrl_mini.study import stats

    recs = records("xyz")
    p = study_status.claim_power(recs, CLAIMS, effect=0.01, planned={"A": 5})["A"]
    diffs = reproduction.paired(CLAIMS[0], recs)
    assert p["sd"] == pytest.approx(statistics.stdev(diffs)) and p["n"] == 5 and p["seeds"] == 4
    level = 1 - 0.05 / 3                                          # 3 claims in the family: its strictest level
    expected = stats.power(p["sd"], 5, 0.01, 0.95), stats.power(p["sd"], 5, 0.01, level)
    assert all(e == e for e in expected)                          # finite: no fallback involved
    assert (p["power"], p["power_strict"]) == pytest.approx(expected)
    assert p["power_strict"] < p["power"] < 1
    short = study_status.claim_power(recs, CLAIMS, relative_effect=0.1)["L"]
    mean_y = statistics.fmean(r["test_length"] for r in recs if r["variant"] == "y")
    assert short["effect"] == pytest.approx(0.1 * mean_y)


def test_power_is_finite_far_in_the_tail():
    """scipy's noncentral-t cdf is NaN far in its lower tail (nc = 8.6, df = 4); stats.power takes that
    tail as the upper tail of -T, so a large effect has power near 1, not NaN."""
    from scipy import stats as st

    from kdrl_mini.study import stats
    level = 1 - 0.05 / 9
    p = stats.power(0.013, 5, 0.05, level)
    upper = st.nct.sf(st.t.ppf(0.5 + level / 2, 4), 4, 0.05 / (0.013 / 5 ** 0.5))
    assert p == p and upper <= p <= upper + (1 - level) / 2 and p > 0.9
    assert stats.power(0.03, 5, 0.05, 0.95) == pytest.approx(0.79, abs=0.01)
    assert stats.power(0.03, 5, -0.05, 0.95) == pytest.approx(stats.power(0.03, 5, 0.05, 0.95))  # two-sided


def test_forest_plot_gives_length_claims_their_own_axis():
    """Accuracy and length claims in separate panels, intervals drawn whole (a length CI of tens of
    tokens was once clipped to [-1, 1] on the accuracy axis)."""
    from kdrl_mini.study.plots import forest_plot
    from kdrl_mini.study.claims import Claim

    claims = [Claim("A", "acc", "s", "x", "y"), Claim("L", "len", "s", "x", "y", metric="test_length", higher=False)]
    judged = {"A": {"mean": 0.05, "low": 0.01, "high": 0.09, "verdict": "reproduced", "level": 0.975},
              "L": {"mean": 4.4, "low": -5.7, "high": 14.5, "verdict": "inconclusive", "level": 0.95}}
    fig = forest_plot(judged, claims)
    assert "at 95-97.5% confidence" in fig.axes[0].get_title()  # the levels it draws, not a blanket "95%"
    acc_ax, len_ax = fig.axes
    assert [t.get_text() for t in acc_ax.get_yticklabels()] == ["A acc"]
    assert [t.get_text() for t in len_ax.get_yticklabels()] == ["L len"]
    assert list(len_ax.lines[0].get_xdata()) == [-5.7, 14.5]
    assert list(acc_ax.lines[0].get_xdata()) == [0.01, 0.09]
