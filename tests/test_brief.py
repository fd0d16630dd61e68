"""The README's brief comparison (kdrl_mini.study.brief) and the study runner shared by every study."""

import math
import os
import subprocess

import pytest

from kdrl_mini.study import brief
from kdrl_mini.study.runner import WORKER_FILE, _take


def test_mean_ci_matches_the_t_interval():
    m, h = brief.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert math.isclose(h, 4.302652729911275 * 1.0 / math.sqrt(3))  # t(0.975, df=2)
    assert brief.mean_ci([5.0]) == (5.0, 0.0)


def test_study_workers_share_runs_by_claim(tmp_path):
    """Two `reproduce --full` processes may share a study: a run claimed by a live process is left
    to it, a claim left by a dead process is taken over."""
    run = tmp_path / "runs" / "grpo" / "seed1"
    assert _take(run) and (run / WORKER_FILE).read_text() == str(os.getpid())
    assert _take(run)  # this process's own claim
    other = subprocess.Popen(["sleep", "30"])
    try:
        (run / WORKER_FILE).write_text(str(other.pid))
        assert not _take(run)  # alive: leave it
    finally:
        other.kill()
        other.wait()
    assert _take(run)  # gone: taken over
    assert (run / WORKER_FILE).read_text() == str(os.getpid())


def test_brief_table_reads_the_study_splits():
    entry = {"seeds": [0], **{k: (0.0, 0.0) for k in brief.METRICS}, "mix_accuracy": (0.3, 0.0),
             "blind_accuracy": (0.05, 0.0), "test@64_accuracy": (0.6, 0.0)}
    table = brief.format_table({"grpo": entry})
    assert "| grpo | 1 | 0.300 ± n/a | 0.050 ± n/a | 0.600 ± n/a |" in table
    assert "s/step" not in table  # machine load, not the method
    records = [{"variant": "grpo", "seed": s, **{k: 0.0 for k in brief.METRICS}, "blind_accuracy": b}
               for s, b in ((0, 0.1), (1, 0.3))]
    assert brief.aggregate(records)["grpo"]["blind_accuracy"][0] == pytest.approx(0.2)


def test_brief_runs_each_method_at_the_study_settings():
    """The main job is the study's world shortened, not a second set of learning rates."""
    from kdrl_mini.study import v3

    assert brief.brief_variants() == {k: v3.VARIANTS[k] for k in brief.BASELINES}
    cfg = v3.base_config(**brief.SHORT)
    assert cfg.student_path == v3.BASE["student_path"] and cfg.max_steps == brief.STEPS
    assert cfg.eval_split_names() == list(brief.SPLITS)
