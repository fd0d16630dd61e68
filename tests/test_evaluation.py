"""The fixed probe set and its exact KL to the teacher (evaluation.probe_batch / probe_kl)."""

import math

import pytest
import torch

from kdrl_mini.config import load_config
from kdrl_mini.evaluation import probe_batch, probe_kl
from kdrl_mini.kl import exact_kl
from kdrl_mini.runs.loading import load_world
from kdrl_mini.runs.metrics import read_metrics
from kdrl_mini.scoring import completion_logits
from kdrl_mini.trainer import Trainer


@pytest.fixture(scope="module")
def world():
    cfg = load_config("kdrl", student_quant="none", teacher_quant="none", probe_size=6, probe_split="test@24")
    return cfg, load_world(cfg)


def test_probe_is_the_teachers_greedy_answers_at_the_probe_budget(world):
    cfg, w = world
    batch = probe_batch(w.teacher, w.tokenizer, cfg, w.splits)
    assert batch.input_ids.shape[0] == 6 and batch.completion_mask.shape[1] <= 24
    assert batch.texts == probe_batch(w.teacher, w.tokenizer, cfg, w.splits).texts  # fixed: same every time


def test_probe_kl_is_the_masked_mean_of_the_full_vocabulary_kl(world):
    cfg, w = world
    batch = probe_batch(w.teacher, w.tokenizer, cfg, w.splits)
    with torch.no_grad():
        per_token = exact_kl(completion_logits(w.student, batch).float(), completion_logits(w.teacher, batch).float())
    m = batch.completion_mask
    expected = (per_token * m).sum() / m.sum()
    got = probe_kl(w.student, w.teacher, batch, rows_per_call=4)  # two calls: 4 + 2 rows
    assert float(expected) > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert float(probe_kl(w.teacher, w.teacher, batch)) == pytest.approx(0.0, abs=1e-6)


def test_every_algorithm_logs_probe_kl_at_its_evaluations(tmp_path):
    for algorithm in ("grpo", "kd-fkl"):
        cfg = load_config("kdrl", algorithm=algorithm, group_size=2, prompts_per_step=2, max_new_tokens=24,
                          max_steps=3, eval_every=2, eval_size=2, eval_splits="test", checkpoint_every=0,
                          probe_size=4, probe_split="test@24", output_dir=str(tmp_path / algorithm))
        Trainer(cfg).train(progress=False)
        steps, _ = read_metrics(cfg.output_dir)
        logged = [s["step"] for s in steps if math.isfinite(s["probe_kl"])]
        assert logged == [2, 3] and all(s["probe_kl"] > 0 for s in steps if s["step"] in logged)


def test_a_probe_split_that_is_not_a_split_is_refused():
    with pytest.raises(ValueError, match="probe_split"):
        load_config("kdrl", probe_size=4, probe_split="nosuch@64")


def test_shorter_budgets_read_off_one_decode_equal_their_own_decode(world):
    """Greedy answers do not depend on the budget until cut: mix@48 read off the 64-token decode is
    the 48-token decode (accuracy, length, truncation)."""
    from kdrl_mini.evaluation import evaluate_splits

    cfg, w = world
    for model in (w.student, w.teacher):
        shared = evaluate_splits(model, w.tokenizer, cfg, w.splits, ["mix@64", "mix@40", "mix@24"], 0, 40)
        alone = [evaluate_splits(model, w.tokenizer, cfg, w.splits, [s], 0, 40)[0] for s in ("mix@64", "mix@40", "mix@24")]
        assert shared == alone
        assert shared[2]["eval_truncated"] > shared[0]["eval_truncated"]  # the cut budget cuts answers
