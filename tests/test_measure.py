"""measure.greedy_changes on the shipped tiny models."""

import pytest

from kdrl_mini import models
from kdrl_mini.tasks import files as tasks
from kdrl_mini.real.measure import greedy_changes
from kdrl_mini.rollout import greedy_eval, sample

KEYS = {"n", "accuracy_a", "accuracy_b", "changed", "right_to_wrong", "wrong_to_right", "texts_a", "texts_b"}


@pytest.fixture(scope="module")
def rows(data_dir):
    return [dict(r) for r in tasks.load_split(data_dir, "test").select(range(8))]


@pytest.fixture(scope="module")
def pair(data_dir):
    load = lambda name: models.load_causal_lm(data_dir / "models" / name, "none", role=name).eval()
    return load("student"), load("student"), load("teacher")


def test_identical_models_change_nothing(pair, rows, tokenizer):
    a, a_again, _ = pair
    a_again.train()  # a model in training mode is decoded in eval mode and handed back in training mode
    out = greedy_changes(a, a_again, tokenizer, rows, max_new_tokens=16, batch_size=3)
    assert set(out) == KEYS
    assert a_again.training and not a.training
    assert out["n"] == 8 and len(out["texts_a"]) == len(out["texts_b"]) == 8
    assert out["changed"] == out["right_to_wrong"] == out["wrong_to_right"] == 0
    assert out["texts_a"] == out["texts_b"]
    assert out["accuracy_a"] == out["accuracy_b"]


def test_different_models_counts_agree_with_texts_and_greedy_eval(pair, rows, tokenizer):
    student, _, teacher = pair
    out = greedy_changes(teacher, student, tokenizer, rows, max_new_tokens=16)
    assert out["texts_a"] == sample(teacher, tokenizer, [r["prompt"] for r in rows], max_new_tokens=16, greedy=True).texts
    assert out["changed"] == sum(x != y for x, y in zip(out["texts_a"], out["texts_b"])) > 0
    assert out["accuracy_a"] == pytest.approx(greedy_eval(teacher, tokenizer, rows, max_new_tokens=16)["accuracy"])
    assert out["accuracy_b"] == pytest.approx(greedy_eval(student, tokenizer, rows, max_new_tokens=16)["accuracy"])
    # net change of correct answers = gained - lost
    assert round((out["accuracy_b"] - out["accuracy_a"]) * 8) == out["wrong_to_right"] - out["right_to_wrong"]
    assert out["right_to_wrong"] + out["wrong_to_right"] <= out["changed"]
