import math

import pytest

from kdrl_mini.schedules import PAPER_BETA_END, PAPER_BETA_START, make_schedule


def test_constant():
    beta = make_schedule("constant", 2e-3)
    assert [beta(s) for s in (0, 1, 10_000)] == [2e-3] * 3
    assert isinstance(beta(5), float)


@pytest.mark.parametrize("name", ["linear", "cosine", "step"])
def test_endpoints_and_hold(name):
    beta = make_schedule(name, 5e-3, 1e-3, total_steps=100)
    assert beta(0) == pytest.approx(5e-3)
    assert beta(100) == pytest.approx(1e-3)
    assert beta(101) == beta(5_000) == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["linear", "cosine", "step"])
def test_floor_is_exact(name):
    # 0.025 + (0.005 - 0.025) * 1.0 == 0.005000000000000001 in floats: the hold must be end itself
    beta = make_schedule(name, 0.025, 0.005, total_steps=42, warmup_steps=3)
    assert beta(45) == beta(46) == beta(10_000) == 0.005


@pytest.mark.parametrize("name", ["linear", "cosine", "step"])
@pytest.mark.parametrize("start,end", [(5e-3, 1e-3), (0.0, 1e-2)])
def test_monotone_between_start_and_end(name, start, end):
    beta = make_schedule(name, start, end, total_steps=50, warmup_steps=7)
    values = [beta(s) for s in range(80)]
    sign = 1 if end >= start else -1
    assert all(sign * (b - a) >= -1e-15 for a, b in zip(values, values[1:]))
    assert min(start, end) - 1e-15 <= min(values) and max(values) <= max(start, end) + 1e-15


def test_linear_and_cosine_midpoints():
    lin = make_schedule("linear", 5e-3, 1e-3, total_steps=100)
    cos = make_schedule("cosine", 5e-3, 1e-3, total_steps=100)
    assert lin(25) == pytest.approx(4e-3)
    assert cos(50) == pytest.approx(3e-3)
    # cosine stays near start early and near end late, unlike linear
    assert cos(10) > lin(10) and cos(90) < lin(90)
    assert cos(25) == pytest.approx(1e-3 + 4e-3 * (1 + math.cos(math.pi / 4)) / 2)


def test_warmup_holds_start_then_anneals():
    beta = make_schedule("linear", 5e-3, 1e-3, total_steps=10, warmup_steps=5)
    assert [beta(s) for s in range(6)] == pytest.approx([5e-3] * 6)
    assert beta(10) == pytest.approx(3e-3)
    assert beta(15) == pytest.approx(1e-3)


def test_step_switches_once():
    beta = make_schedule("step", 5e-3, 0.0, total_steps=3)
    assert [beta(s) for s in range(6)] == [5e-3, 5e-3, 5e-3, 0.0, 0.0, 0.0]


def test_paper_values():
    beta = make_schedule("linear", PAPER_BETA_START, PAPER_BETA_END, total_steps=10)
    assert (beta(0), beta(10)) == pytest.approx((5e-3, 1e-3))


def test_errors():
    with pytest.raises(ValueError, match="constant, linear, cosine, step"):
        make_schedule("exponential", 1e-3)
    with pytest.raises(ValueError, match="end= and total_steps="):
        make_schedule("linear", 1e-3)
    with pytest.raises(ValueError, match="end= and total_steps="):
        make_schedule("cosine", 1e-3, end=0.0)
    with pytest.raises(ValueError, match="start"):
        make_schedule("constant", -1e-3)
    with pytest.raises(ValueError, match="end"):
        make_schedule("linear", 1e-3, -1e-3, 10)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("linear", 1e-3, 0.0, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule("linear", 1e-3, 0.0, 10, warmup_steps=-1)
    with pytest.raises(ValueError, match="step"):
        make_schedule("constant", 1e-3)(-1)
