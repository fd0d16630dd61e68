"""rollout.sampled_eval: sampled accuracy per row, pass@k, and its limits (near-greedy, batching)."""

import pytest
import torch

from kdrl_mini import models
from kdrl_mini.world import task as tasks
from kdrl_mini.tasks import files as task_files
from kdrl_mini.rollout import greedy_eval, sampled_eval


@pytest.fixture(scope="module")
def rows(data_dir):
    return [dict(r) for r in task_files.load_split(data_dir, "test").select(range(12))]


@pytest.fixture(scope="module")
def teacher(data_dir):
    return models.load_causal_lm(data_dir / "models" / "teacher", "none", role="teacher").eval()


def test_near_zero_temperature_is_greedy(teacher, tokenizer, rows):
    # At temperature 1e-3 every sample is the argmax path: each row scores 0 or 1, as greedy does.
    torch.manual_seed(0)
    out = sampled_eval(teacher, tokenizer, rows, samples=2, max_new_tokens=tasks.EVAL_BUDGET, temperature=1e-3, batch_prompts=5)
    greedy = greedy_eval(teacher, tokenizer, rows, max_new_tokens=tasks.EVAL_BUDGET)
    assert out["n"] == len(out["per_row"]) == 12
    assert set(out["per_row"]) <= {0.0, 1.0}
    assert out["per_sample"] == pytest.approx(greedy["accuracy"]) and out["pass@2"] == pytest.approx(greedy["accuracy"])
    assert greedy["accuracy"] > 0.5  # the tiny world's teacher: a test that can see a wrong row order


def test_summary_agrees_with_rows_and_batching_does_not_matter(teacher, tokenizer, rows):
    torch.manual_seed(3)
    a = sampled_eval(teacher, tokenizer, rows, samples=4, max_new_tokens=tasks.EVAL_BUDGET, temperature=1.0, batch_prompts=12)
    assert a["per_sample"] == pytest.approx(sum(a["per_row"]) / 12)
    assert a["pass@4"] == pytest.approx(sum(p > 0 for p in a["per_row"]) / 12)
    assert all(p in (0.0, 0.25, 0.5, 0.75, 1.0) for p in a["per_row"])
    torch.manual_seed(3)
    again = sampled_eval(teacher, tokenizer, rows, samples=4, max_new_tokens=tasks.EVAL_BUDGET, temperature=1.0, batch_prompts=12)
    assert again["per_row"] == a["per_row"]  # seeded: repeatable
    assert sampled_eval(teacher, tokenizer, [], samples=4)["n"] == 0
