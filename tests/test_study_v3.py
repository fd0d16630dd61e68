"""Study v3 (data/study_v3): the committed runs are the pre-registered plan at the frozen code, every
per-run summary, the tables, the verdicts and the item-1 gates are re-derived from the runs' metrics."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdrl_mini.study import v3, v3_claims
from kdrl_mini.study.runner import collect

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / v3.STUDY_DIR
RUNS = sorted(STUDY.glob("runs/*/seed*/final.json"))
FROZEN = "7e98928dc64e4ff3238c19fca25f8b8ccfd2e213"  # the commit adding PREREGISTRATION.md (code of db339c1)
done = pytest.mark.skipif(len(RUNS) < len(v3.VARIANTS) * len(v3.STUDY_SEEDS), reason="the study is not complete")


def _load(name):
    return json.loads((STUDY / name).read_text())


def test_the_preregistration_states_the_plan_and_the_claims():
    text = (STUDY / "PREREGISTRATION.md").read_text()
    assert "db339c1" in text and f"{v3.BETA}" in text and "Seeds:** 1-10" in text
    assert v3.STUDY_SEEDS == list(range(1, 11))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| C")}
    for claim in v3_claims.CLAIMS:  # each claim's row names its two arms
        assert f"| {claim.better} | {claim.worse} |" in rows[claim.name], claim.name
    assert f"{v3_claims.SESOI} accuracy" in text and f"{v3_claims.MARGIN} accuracy" in text


@pytest.mark.skipif(not RUNS, reason="no finished study runs committed yet")
@pytest.mark.parametrize("final", RUNS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_each_run_is_the_plan_at_the_frozen_code_and_its_summary_is_rederived(final):
    saved = json.loads(final.read_text())
    again = v3.summarize(final.parent)
    assert saved.keys() - {"variant", "seed"} == again.keys()
    for key, value in again.items():
        assert saved[key] == pytest.approx(value, nan_ok=True), key
    text = (final.parent / "config.yaml").read_text()
    assert text.splitlines()[0] == f"# code: {FROZEN}"  # a clean checkout of the frozen commit
    config = yaml.safe_load(text)
    planned = v3.base_config(**v3.VARIANTS[saved["variant"]]).to_dict()
    # a field added after the frozen commit is missing from its config.yaml; its default keeps the old behaviour
    changed = {k for k, v in planned.items() if config.get(k, v) != v} - {"output_dir", "seed", "threads"}
    assert not changed and config["seed"] == saved["seed"] and saved["seed"] in v3.STUDY_SEEDS


@done
def test_the_tables_are_rederived_from_the_runs():
    records, untrained, teacher = collect(STUDY), _load("untrained.json"), _load("teacher.json")
    assert (STUDY / "table.md").read_text().strip() == v3_claims.table(records, untrained, teacher).strip()
    assert (STUDY / "claims.md").read_text().strip() == v3_claims.claims_table(records, untrained).strip()


@done
def test_the_gates_command_prints_the_gates_of_the_study_runs():
    out = subprocess.run([sys.executable, "-m", "kdrl_mini.study.v3", "gates", "study"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    gates = v3.gates(collect(STUDY), _load("untrained.json"), _load("teacher.json"))
    lines = [line for line in out.stdout.splitlines() if line.strip().startswith(("holds", "FAILS"))]
    assert len(lines) == len(gates)
    for line, gate in zip(lines, gates):
        assert gate["gate"] in line and line.strip().startswith("holds" if gate["holds"] else "FAILS")
