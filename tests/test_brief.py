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
    entry = {"seeds": [0], **{k: (0.0, 0.0) for k in brief.METRICS}, "mix@64_accuracy": (0.3, 0.0),
             "test@64_accuracy": (0.6, 0.0), "blind@64_accuracy": (0.05, 0.0)}
    baselines = {"untrained student": {"mix@64_accuracy": 0.4, "test@64_accuracy": 0.5, "blind@64_accuracy": 0.2},
                 "teacher": {"mix@64_accuracy": 0.7, "test@64_accuracy": 1.0, "blind@64_accuracy": 0.0}}
    table = brief.format_table({"grpo": entry}, baselines)
    assert "| grpo | 1 | 0.300 ± n/a | 0.600 ± n/a | 0.050 ± n/a |" in table
    assert "| teacher | - | 0.700 | 1.000 | 0.000 |" in table
    assert "s/step" not in table  # machine load, not the method
    records = [{"variant": "grpo", "seed": s, **{k: 0.0 for k in brief.METRICS}, "blind@64_accuracy": b}
               for s, b in ((0, 0.1), (1, 0.3))]
    assert brief.aggregate(records)["grpo"]["blind@64_accuracy"][0] == pytest.approx(0.2)
    sentence = brief.summary_sentence({"grpo": entry, "kdrl": {**entry, "mix@64_accuracy": (0.45, 0.0)}}, baselines)
    assert "on mix@64 the best is kdrl at 0.450 (untrained 0.400, teacher 0.700)" in sentence


def test_brief_runs_each_method_at_the_study_settings():
    """The main job is study v4's world shortened, not a second set of learning rates."""
    from kdrl_mini.study import v4

    assert brief.MAIN_ARMS == {k: v4.ARMS[k] for k in ("grpo", "kd-fkl", "kdrl")}
    cfg = v4.base_config(**brief.SHORT, **v4.ARMS["kdrl"])
    assert cfg.student_path == v4.BASE["student_path"] and cfg.max_steps == brief.STEPS and cfg.max_new_tokens == 48
    assert cfg.eval_split_names() == list(brief.SPLITS) and cfg.eval_size >= 200 and cfg.final_eval_size >= 200


def test_the_main_job_runs_in_two_workers_and_reports(tmp_path, capsys):
    """Two steps of each method through the job's two worker processes: every run finishes once, the
    baselines are measured on the job's rows, the table, the figure and the sentence are written."""
    assert brief.reproduce_brief(tmp_path, steps=2) == 0
    out = capsys.readouterr().out
    assert "untrained student" in out and "After 2 steps" in out
    assert sorted(p.parent.parent.name for p in tmp_path.glob("runs/*/seed0/final.json")) == ["grpo", "kd-fkl", "kdrl"]
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "baselines.json").is_file()
