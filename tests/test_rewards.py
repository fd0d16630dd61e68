import pytest
import torch

from kdrl_mini.rewards import (
    batch_rewards,
    correctness_reward,
    extract_answer,
    format_reward,
    reward,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("47+38=85\n85-19=66\n#### 66", "66"),
        ("#### 1,234,567", "1234567"),
        ("  ####   -3.5  \n", "-3.5"),
        ("#### 1\nwait, recheck\n#### 2\nmore text", "2"),  # the last marker line wins
        ("the answer is 42", None),
        ("####", None),
        ("####   \n", None),
        ("x #### 5", None),  # the marker must start the line
        ("", None),
        (None, None),
        (42, None),
        (b"#### 7", "7"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text,answer,expected",
    [
        ("#### 42", "42", 1.0),
        ("#### 42.0", "42", 1.0),
        ("#### 42", 42, 1.0),
        ("#### 4.2e1", "42", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("#### 41", "42", 0.0),
        ("42", "42", 0.0),  # no marker, no credit
        ("#### 0.1", "0.10", 1.0),
        ("#### Paris", "paris", 1.0),
        ("#### 42abc", "42", 0.0),
        ("steps\n#### 66", "47+38=85\n85-19=66\n#### 66", 1.0),  # gold as a GSM8K solution
        ("#### 66", None, 0.0),
        ("#### 66", "", 0.0),
    ],
)
def test_correctness_reward(text, answer, expected):
    assert correctness_reward(text, answer) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("47+38=85\n#### 85", 1.0),
        ("47+38=85\n#### 85\n\n  ", 1.0),
        ("#### 85", 1.0),
        ("#### 85\nsome more text", 0.0),  # the answer line must be last
        ("#### 84\n#### 85", 0.0),  # exactly one marker line
        ("#### ", 0.0),
        ("#### 8#5", 0.0),
        ("no answer", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_reward_combines_terms():
    assert reward("#### 5", "5") == 1.0
    assert reward("#### 5", "5", format_weight=0.5) == 1.5
    assert reward("#### 4\n#### 5", "5", format_weight=0.5) == 1.0
    assert reward("#### 4", "5", format_weight=0.5) == 0.5


def test_garbage_never_raises():
    junk = [
        None,
        b"\x00\xff\xfe\x80garbage",
        bytes(range(256)),
        "\x00\x01####\x02",
        "#" * 100_000,
        "9" * 50_000,
        "#### " + "9" * 5_000,
        "line\n" * 200_000 + "#### 3",
        object(),
        1e308,
        ["#### 1"],
    ]
    for text in junk:
        for answer in ("3", None, 3, b"\xff", "9" * 5_000):
            assert reward(text, answer, format_weight=1.0) in (0.0, 1.0, 2.0)
    assert correctness_reward("line\n" * 200_000 + "#### 3", "3") == 1.0


def test_batch_rewards():
    out = batch_rewards(["#### 1", "#### 2", None, "#### 3\n#### 3"], ["1", "3", "1", 3], format_weight=0.5)
    assert out.dtype == torch.float32 and out.shape == (4,)
    assert out.tolist() == [1.5, 0.5, 0.0, 1.0]
    assert batch_rewards([], []).shape == (0,)
    with pytest.raises(ValueError, match="one answer per completion"):
        batch_rewards(["#### 1"], [])


def test_overlong_penalty_ramp_and_truncation():
    from kdrl_mini.rewards import overlong_penalty

    lengths = torch.tensor([10, 40, 44, 48, 48])
    truncated = torch.tensor([False, False, False, False, True])
    out = overlong_penalty(lengths, truncated, max_len=48, cache=8)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="overlong cache"):
        overlong_penalty(lengths, truncated, max_len=48, cache=0)
