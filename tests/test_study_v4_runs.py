"""Study v4's committed runs (data/study_v4/runs): each is the pre-registered plan at the frozen code, and its
final.json is re-derived from its own metrics.jsonl. (The tables, claims and figures are re-derived once the
82 runs are in.)"""

import json
from pathlib import Path

import pytest
import yaml

from kdrl_mini.study import v4

STUDY = Path(__file__).resolve().parents[1] / "data" / "study_v4"
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
