"""Study v4's committed runs (data/study/runs): each is the pre-registered plan at the frozen code, and its
final.json is re-derived from its own metrics.jsonl. (The tables, claims and figures are re-derived once the
82 runs are in.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdrl_mini.study import v4, v4_claims, v4_figures
from kdrl_mini.study.runner import collect

STUDY = Path(__file__).resolve().parents[1] / v4.STUDY_DIR
FROZEN = "8a69650ea9fcb6e17067776fe74cc7930ac974b9"  # the pre-registration's commit (its kdrl_mini is 5358687's)
FINALS = sorted(STUDY.glob("runs/*/seed*/final.json"))


def test_the_preregistration_names_the_frozen_code():
    text = (STUDY / "PREREGISTRATION.md").read_text()
    assert "53586870f1c482550680e1cc67e3e8491c7754aa" in text and "82 runs" in text


@pytest.mark.parametrize("final", FINALS, ids=[f"{p.parent.parent.name}/{p.parent.name}" for p in FINALS])
def test_each_run_is_the_plan_at_the_frozen_code_and_its_summary_is_rederived(final):
    saved = json.loads(final.read_text())
    again = v4.summarize(final.parent)
    assert saved.keys() - {"variant", "seed"} == again.keys()
    for key, value in again.items():
        assert saved[key] == pytest.approx(value, nan_ok=True), key
    text = (final.parent / "config.yaml").read_text()
    assert text.splitlines()[0] == f"# code: {FROZEN}"  # a clean checkout of the pre-registration commit
    plan, seeds = v4.study_plan()
    planned = v4.base_config(**plan[saved["variant"]]).to_dict()
    config = yaml.safe_load(text)
    # a field added after the frozen commit is missing from its config.yaml; its default keeps the old behaviour
    changed = {k for k, v in planned.items() if config.get(k, v) != v} - {"output_dir", "seed", "threads"}
    assert not changed and config["seed"] == saved["seed"] and saved["seed"] in seeds[saved["variant"]]


done = pytest.mark.skipif(len(FINALS) < 82, reason="the study's 82 runs are not all committed yet")


def _outputs():
    records = collect(STUDY)
    base = v4.write_baselines(STUDY)  # the committed untrained.json and teacher.json
    return records, base


@done
def test_the_tables_and_the_gates_are_rederived_from_the_runs():
    records, base = _outputs()
    order = tuple(v4.ARMS) + tuple(v4.CURVE)
    assert (STUDY / "table.md").read_text().strip() == v4_claims.table(
        records, base["untrained"], base["teacher"], order).strip()
    judged = v4_claims.judge_all(records, base["untrained"])
    assert (STUDY / "claims.md").read_text().strip() == v4_claims.claims_markdown(
        judged, v4_claims.CLAIMS).strip()
    gates = v4_claims.gates(records, base["untrained"], base["teacher"])
    assert (STUDY / "gates.md").read_text().strip() == v4_claims.gates_table(gates).strip()


@done
@pytest.mark.parametrize("name", ["forest", "budget", "beta_curve"])
def test_the_figures_are_redrawn_pixel_for_pixel(name, tmp_path):
    from matplotlib import image, pyplot

    records, base = _outputs()
    baselines = {"untrained": base["untrained"], "teacher": base["teacher"]}
    out = tmp_path / f"{name}.png"
    if name == "forest":
        v4_claims.forest_plot(v4_claims.judge_all(records, base["untrained"]), v4_claims.CLAIMS, out)
    elif name == "budget":
        v4_figures.budget_figure(records, baselines, list(v4.BUDGET_ARMS), out)
    else:
        v4_figures.beta_curve(records, baselines, v4.CURVE_OF, v4.KD_END, v4.BUDGET, out)
    pyplot.close("all")
    assert (image.imread(out) == image.imread(STUDY / f"{name}.png")).all()


@done
def test_the_gates_command_prints_each_gate_of_the_study_runs():
    root = STUDY.parents[1]
    out = subprocess.run([sys.executable, "-m", "kdrl_mini.study.v4", "gates"], cwd=root, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    records, base = _outputs()
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line.endswith(("| yes |", "| NO |"))]
    assert rows == v4_claims.gates_table(v4_claims.gates(records, base["untrained"], base["teacher"])).splitlines()[2:]
