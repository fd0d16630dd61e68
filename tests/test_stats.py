"""The study's statistics and its pre-registered verdict rule, on hand-made numbers."""

import json
import math

import pytest

from kdrl_mini.study import reproduction
from kdrl_mini.study import stats


def test_t_interval_matches_the_textbook_value():
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0], 0.95)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), rel=1e-5)
    assert stats.t_interval([0.5], 0.95)[1:] == (-math.inf, math.inf)


def test_holm_steps_down_and_stops_at_the_first_failure():
    levels = stats.holm_levels({"a": 0.001, "b": 0.02, "c": 0.03, "d": 0.5}, alpha=0.05)
    # a: 0.001 <= 0.05/4 passes; b: 0.02 > 0.05/3 fails -> b, c, d all tested at 0.05/3
    assert levels["a"] == pytest.approx(1 - 0.05 / 4)
    assert levels["b"] == levels["c"] == levels["d"] == pytest.approx(1 - 0.05 / 3)


@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.2, "reproduced"), (-0.2, -0.01, "not reproduced (reversed)"),
    (-0.02, 0.02, "not reproduced (equivalent)"), (-0.05, 0.1, "inconclusive"), (-0.02, 0.04, "inconclusive"),
])
def test_verdict_rule(low, high, expected):
    assert stats.verdict(low, high, 0.03) == expected


def test_power_grows_with_seeds_and_effect():
    assert stats.power(0.05, 5, 0.05) < stats.power(0.05, 10, 0.05) < stats.power(0.05, 10, 0.1)
    assert 0.0 < stats.power(0.05, 5, 0.0) < 0.06  # no effect: about the false-positive rate


def _records(effect, noise):
    out = []
    for seed in range(5):
        wobble = noise * (seed - 2)
        out.append({"variant": "kdrl", "seed": seed, "test_accuracy": 0.5 + effect + wobble})
        out.append({"variant": "grpo", "seed": seed, "test_accuracy": 0.5 + wobble * 0.5})
    return out


def test_judge_reproduces_a_clear_gain_and_calls_a_null_equivalent():
    claims = (reproduction.Claim("C1", "KDRL beats GRPO", "-", "kdrl", "grpo"),)
    assert reproduction.judge_all(_records(0.1, 0.01), claims)["C1"]["verdict"] == "reproduced"
    assert reproduction.judge_all(_records(0.0, 0.002), claims)["C1"]["verdict"] == "not reproduced (equivalent)"
    assert reproduction.judge_all(_records(-0.1, 0.01), claims)["C1"]["verdict"] == "not reproduced (reversed)"
    assert reproduction.judge_all(_records(0.02, 0.05), claims)["C1"]["verdict"] == "inconclusive"


def test_summary_averages_the_last_five_evaluations(tmp_path):
    rows = [{"kind": "train", "step": s, "exact_kl": 1.0, "reward": 0.5, "response_length": 30.0} for s in range(1, 11)]
    accs = [0.1, 0.2, 0.3, 0.5, 0.6, 0.6, 0.7, 0.7]
    rows += [{"kind": "eval", "step": i + 1, "split": "test", "eval_accuracy": a, "eval_length": 20.0,
              "eval_truncated": 0.0, "eval_n": 100} for i, a in enumerate(accs)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = reproduction.summarize(tmp_path)
    assert s["test_accuracy"] == pytest.approx((0.5 + 0.6 + 0.6 + 0.7 + 0.7) / 5)
    assert s["test_auc"] == pytest.approx(sum(accs) / len(accs))
    assert s["steps_to_threshold"] == 4
    assert s["train_exact_kl"] == 1.0


@pytest.mark.parametrize("low, high, mean, expected", [
    (0.01, 0.09, 0.05, "reproduced"),                                      # estimate reaches the SESOI
    (0.005, 0.025, 0.015, "real but below the smallest effect of interest"),  # above 0, inside the margin
    (-0.01, 0.02, 0.005, "not reproduced (equivalent)"), (-0.2, -0.01, -0.1, "not reproduced (reversed)"),
])
def test_verdict_with_a_smallest_effect_of_interest(low, high, mean, expected):
    assert stats.verdict(low, high, 0.03, sesoi=0.05, mean=mean) == expected


def test_seeds_for_power_reaches_the_target_and_respects_the_floor():
    n = stats.seeds_for_power(0.05, 0.05, 0.99)
    assert stats.power(0.05, n, 0.05, 0.99) >= 0.8 > stats.power(0.05, n - 1, 0.05, 0.99)
    assert stats.seeds_for_power(0.001, 0.05, 0.95) == 8  # a tiny spread still gets the minimum
    assert stats.seeds_for_power(1.0, 0.01, 0.99, maximum=20) == 20
