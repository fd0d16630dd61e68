"""The committed reproduction results are what their per-run files say, and the statistics are right."""

import json
import math
from pathlib import Path

import pytest

from kdrl_mini import study

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"


def test_mean_ci_matches_the_t_interval():
    m, h = study.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert math.isclose(h, 4.303 * 1.0 / math.sqrt(3))
    assert study.mean_ci([5.0]) == (5.0, 0.0)


@pytest.mark.parametrize("diffs, verdict", [
    ([0.10, 0.12, 0.11], "reproduced"),
    ([-0.10, -0.12, -0.11], "not reproduced (reversed)"),
    ([0.10, -0.12, 0.02], "inconclusive"),
])
def test_judge_pairs_by_seed(diffs, verdict):
    records = []
    for seed, d in enumerate(diffs):
        records.append({"variant": "a", "seed": seed, "test_accuracy": 0.5 + d})
        records.append({"variant": "b", "seed": seed, "test_accuracy": 0.5})
    assert study.judge(study.Claim("a beats b", "", "a", "b"), records)["verdict"] == verdict
    lower = study.Claim("a is shorter", "", "a", "b", higher=False)
    flipped = {"reproduced": "not reproduced (reversed)", "not reproduced (reversed)": "reproduced"}
    assert study.judge(lower, records)["verdict"] == flipped.get(verdict, verdict)


committed = pytest.mark.skipif(not (RESULTS / "table.csv").exists(), reason="no committed study results")


@committed
def test_each_final_json_matches_its_metrics_file():
    runs = sorted(RESULTS.glob("runs/*/seed*/final.json"))
    assert runs
    for path in runs:
        saved = json.loads(path.read_text())
        recomputed = study.final_metrics(path.parent)
        for key, value in recomputed.items():
            assert saved[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (path, key)


@committed
def test_committed_table_and_claims_re_aggregate(tmp_path):
    records = study.collect(RESULTS)
    study.write_table(study.aggregate(records), tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text() == (RESULTS / "table.csv").read_text()
    assert study.claims_table(records, beta=0.05) + "\n" == (RESULTS / "claims.md").read_text()


def test_study_workers_share_runs_by_claim(tmp_path):
    """Two `reproduce --full` processes may share a study: a run claimed by a live process is left
    to it, a claim left by a dead process is taken over."""
    import os
    import subprocess

    from kdrl_mini.study import WORKER_FILE, _take

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


def test_brief_table_shows_blind_when_the_world_has_it():
    entry = {"seeds": [0], "test_accuracy": (0.3, 0.0), "ood_accuracy": (0.0, 0.0), "test_length": (40.0, 0.0),
             "final_exact_kl": (0.1, 0.0), "step_time": (1.0, 0.0)}
    assert "blind" not in study.format_table({"grpo": entry})
    table = study.format_table({"grpo": {**entry, "blind_accuracy": (0.05, 0.0)}})
    assert "| blind acc |" in table and "| grpo | 1 | 0.300 ± n/a | 0.050 ± n/a |" in table
    assert "s/step" not in table  # machine load, not the method
    records = [{"variant": "grpo", "seed": s, "blind_accuracy": b, **{k: 0.0 for k in study.METRICS}}
               for s, b in ((0, 0.1), (1, 0.3))]
    assert study.aggregate(records)["grpo"]["blind_accuracy"][0] == pytest.approx(0.2)
