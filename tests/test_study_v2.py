"""The pre-registered study (data/study): every committed per-run summary and the claims table are
re-derived from the per-run metrics files, and the plan on disk is the pre-registered one."""

import json
from pathlib import Path

import pytest

from kdrl_mini.study import reproduction
from kdrl_mini.study import runner as study

STUDY = Path(__file__).resolve().parents[1] / "data" / "study"
RUNS = sorted(STUDY.glob("runs/*/seed*/final.json"))


def test_the_preregistration_states_the_plan_in_code():
    text = (STUDY / "PREREGISTRATION.md").read_text()
    s = reproduction.SETTINGS
    for fact in (f"{s.max_steps} steps", f"every {s.eval_every} steps", "1,000 rows", f"beta {s.beta}",
                 f"{s.anneal_start} to a floor of {s.anneal_floor}", f"within\n{s.anneal_steps} steps",
                 f"{round(s.mean_anneal_beta(), 6)}"):
        assert fact in text, fact
    variants, seeds = s.full_plan()
    for name in variants:
        assert f"`{name}`" in text, name
    for claim in reproduction.CLAIMS:
        assert f"| {claim.name} | {claim.text}" in text, claim.name


@pytest.mark.skipif(not RUNS, reason="no finished study runs committed yet")
@pytest.mark.parametrize("final", RUNS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_each_summary_is_rederived_from_its_metrics(final):
    saved = json.loads(final.read_text())
    again = reproduction.summarize(final.parent)
    for key, value in again.items():
        assert saved[key] == pytest.approx(value, nan_ok=True), key
    variants, _ = reproduction.SETTINGS.full_plan()
    config = (final.parent / "config.yaml").read_text()
    for key, value in variants[saved["variant"]].items():
        assert f"{key}: {value}" in config, (key, value)


@pytest.mark.skipif(not (STUDY / "claims.md").exists(), reason="no claims table yet")
def test_the_claims_table_is_rederived_from_the_runs():
    records = study.collect(STUDY)
    assert (STUDY / "claims.md").read_text().strip() == reproduction.claims_table(records).strip()
