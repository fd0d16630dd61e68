"""The shared judging rule (kdrl_mini.study.claims) and the per-arm table (kdrl_mini.study.tables) on records
whose answers are known."""

import statistics

import pytest

from kdrl_mini.study import stats
from kdrl_mini.study.claims import UNTRAINED, Claim, Thresholds, claims_table, judge_all
from kdrl_mini.study.tables import variant_table

UNTRAINED_ROW = {"mix_accuracy": 0.30, "blind_accuracy": 0.10, "mix_length": 40.0}
TH = Thresholds(sesoi=0.05, margin=0.03, length_sesoi=0.10, length_margin=0.06)


def _records(better: str, worse: str, metric: str, gains: list[float], base: float = 0.4) -> list[dict]:
    out = []
    for seed, g in enumerate(gains, start=1):
        out += [{"variant": better, "seed": seed, metric: base + g}, {"variant": worse, "seed": seed, metric: base}]
    return out


def _judge(claim: Claim, records: list[dict], untrained: dict = UNTRAINED_ROW) -> dict:
    return judge_all(records, untrained, (claim,), TH)[claim.name]


ACC = Claim("X", "a beats b", "s", "a", "b", "mix_accuracy")


@pytest.mark.parametrize("gains, expected", [
    ([0.08, 0.10, 0.09, 0.11, 0.10, 0.09], "reproduced"),
    ([0.02, 0.025, 0.03, 0.02, 0.025, 0.03], "real but below the smallest effect of interest"),
    ([0.0, 0.004, -0.004, 0.002, -0.002, 0.0], "not reproduced (equivalent)"),
    ([-0.1, -0.09, -0.11, -0.1, -0.1, -0.09], "not reproduced (reversed)"),
    ([0.2, -0.2, 0.1, -0.1, 0.15, -0.05], "inconclusive"),
])
def test_verdicts_use_the_sesoi_and_the_margin(gains, expected):
    """An interval above 0 whose estimate is below the SESOI (0.05) is its own verdict, not 'reproduced'."""
    assert _judge(ACC, _records("a", "b", "mix_accuracy", gains))["verdict"] == expected


def test_one_claim_is_judged_at_the_unadjusted_level_and_reports_power():
    gains = [0.04, 0.06, 0.05, 0.07, 0.03, 0.05]
    j = _judge(ACC, _records("a", "b", "mix_accuracy", gains))
    assert j["level"] == pytest.approx(0.95)
    m, lo, hi = stats.t_interval(gains, 0.95)
    assert (j["mean"], j["low"], j["high"]) == pytest.approx((m, lo, hi))
    assert j["power"] == pytest.approx(stats.power(statistics.stdev(gains), 6, 0.05, 0.95))


def test_the_better_arm_is_reported_against_the_untrained_student():
    """'a beats b' with both below the untrained student: the vs-untrained interval shows it."""
    records = _records("a", "b", "mix_accuracy", [0.08, 0.1, 0.09, 0.11], base=0.1)
    vs = _judge(ACC, records)["vs_untrained"]
    assert vs[0] == pytest.approx(0.1 + 0.095 - 0.30) and vs[2] < 0


def test_without_the_untrained_numbers_there_is_no_comparison_with_them():
    """A study without untrained.json (the preset study run with ``baseline=False``) is judged all the same."""
    records = _records("a", "b", "mix_accuracy", [0.08, 0.1, 0.09, 0.11])
    j = _judge(ACC, records, untrained={})
    assert j["verdict"] == "reproduced" and "vs_untrained" not in j
    row = [line for line in claims_table({"X": j}, (ACC,)).splitlines() if line.startswith("| X |")]
    assert row == [f"| X | a beats b | s | {j['mean']:+.3f} [{j['low']:+.3f}, {j['high']:+.3f}] (95.00%, 4) | — | "
                   f"0.05 | {j['power']:.2f} | reproduced |"]


def test_a_claim_against_the_untrained_student_is_a_one_sample_test():
    claim = Claim("M", "a above untrained on blind", "s", "a", UNTRAINED, "blind_accuracy")
    records = [{"variant": "a", "seed": s, "blind_accuracy": v} for s, v in enumerate([0.2, 0.22, 0.18, 0.2], 1)]
    j = _judge(claim, records)
    assert j["mean"] == pytest.approx(0.1) and j["verdict"] == "reproduced" and "vs_untrained" not in j


def test_length_claims_scale_sesoi_and_margin_by_the_worse_arm():
    claim = Claim("L", "a shorter", "s", "a", "b", "mix_length", higher=False)
    records = _records("a", "b", "mix_length", [-6.0, -5.5, -6.5, -6.0], base=40.0)
    j = _judge(claim, records)
    assert j["sesoi"] == pytest.approx(0.10 * 40.0) and j["margin"] == pytest.approx(0.06 * 40.0)
    assert j["mean"] == pytest.approx(6.0) and j["verdict"] == "reproduced"


def test_holm_levels_follow_the_p_values_and_one_seed_is_not_judged():
    c1, c2 = ACC, Claim("Y", "c beats b", "s", "c", "b", "mix_accuracy")
    recs = _records("a", "b", "mix_accuracy", [0.1, 0.11, 0.09, 0.1]) + \
        [{"variant": "c", "seed": s, "mix_accuracy": 0.4 + g} for s, g in enumerate([0.05, -0.02, 0.03, 0.0], 1)]
    j = judge_all(recs, UNTRAINED_ROW, (c1, c2), TH)
    assert j["X"]["level"] == pytest.approx(0.975) and j["Y"]["level"] == pytest.approx(0.95)
    one = judge_all(_records("a", "b", "mix_accuracy", [0.1]), UNTRAINED_ROW, (ACC,), TH)
    assert one["X"] == {"verdict": "not run", "seeds": 1}
    assert "| X | a beats b | s | — | — | — | — | not run |" in claims_table(one, (ACC,))


def test_variant_table_by_hand():
    """Fixed rows first, the given order, then the other arms by name; mean ± the 95% t half-width, one seed
    "± n/a", no seed "—", NaN (does not apply) left out."""
    nan = float("nan")
    records = [{"variant": "z", "seed": 1, "acc": 0.5, "len": nan}, {"variant": "b", "seed": 1, "acc": 0.2},
               {"variant": "b", "seed": 2, "acc": 0.4, "len": 30.0}, {"variant": "a", "seed": 1, "acc": 0.1}]
    table = variant_table(records, ("acc", "len"), ("b",), [("untrained student", {"acc": 0.25})]).splitlines()
    half = stats.t_interval([0.2, 0.4], 0.95)[2] - 0.3
    assert table == ["| variant | seeds | acc | len |", "|---|---|---|---|", "| untrained student | - | 0.250 | — |",
                     f"| b | 2 | 0.300 ± {half:.3f} | 30.000 ± n/a |", "| a | 1 | 0.100 ± n/a | — |",
                     "| z | 1 | 0.500 ± n/a | — |"]
