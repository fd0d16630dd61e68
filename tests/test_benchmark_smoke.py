"""The benchmark's quick path runs end to end and writes well-formed results (no speed targets)."""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("trl", reason="the benchmark compares against TRL: pip install -e '.[bench]'")


def numbers(tree):
    """Every int/float leaf of a JSON tree (booleans excluded)."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


@pytest.mark.slow
def test_quick_benchmark_writes_ratios_times_and_memory(tmp_path, data_dir):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_cost", "--quick", "--out", str(out)],
                          cwd=data_dir.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert {"command", "machine", "settings", "step_time_s", "ratios", "laps_s", "kdrl_breakdown_s", "memory"} <= r.keys()
    assert {"trl_grpo_fp32", "grpo_fp32", "kdrl_fp32", "grpo_quantised", "kdrl_quantised"} <= r["step_time_s"].keys()
    assert {"ours_vs_trl", "kdrl_vs_grpo_quantised", "kdrl_vs_grpo_fp32",
            "weights_quantised_vs_fp32_shipped"} <= r["ratios"].keys()
    pieces = {**r["kdrl_breakdown_s"]["laps"], **r["kdrl_breakdown_s"]["floors"]}
    assert {"rollout_time", "teacher_time", "train_time", "bare_decode", "teacher_forward", "student_forward_backward"} <= pieces.keys()
    assert set(r["memory"]["shipped"]) == {"fp32", "quantised"}
    for case in r["memory"]["shipped"].values():
        assert case["student"]["bytes"] > 0 and case["rss_peak_mb"] >= case["rss_baseline_mb"] > 0
    # every number is finite; every time, ratio and size is positive (weight counts may be 0 for absent kinds)
    assert all(math.isfinite(x) for x in numbers(r))
    for section in ("step_time_s", "ratios", "kdrl_breakdown_s"):
        assert all(x > 0 for x in numbers(r[section])), section
    assert "ours_vs_trl" in done.stdout  # the table is printed
