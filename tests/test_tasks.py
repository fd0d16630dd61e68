import json
import random

import pytest

from kdrl_mini.tasks import files as task_files
from kdrl_mini.world import task as tasks
from kdrl_mini.rewards import correctness_reward


def _evaluate(prompt: str) -> int:
    expr = prompt.removeprefix("Compute ").strip().rstrip(".")
    assert set(expr) <= set("0123456789+-")
    return eval(expr)  # the expression is digits and +/- only (checked above)


def test_generator_is_deterministic():
    assert tasks.make_split(50, seed=3) == tasks.make_split(50, seed=3)
    assert tasks.make_split(50, seed=3) != tasks.make_split(50, seed=4)


# every spec the world draws from (IN_DOMAIN, OUT_OF_DOMAIN and the crossing / long-chain ones)
ALL_SPECS = sorted({spec for mix in tasks.MIXES.values() for spec, _ in mix} | {tasks.IN_DOMAIN, tasks.OUT_OF_DOMAIN}, key=repr)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=repr)
def test_answers_and_worked_solutions_are_correct(spec):
    rng = random.Random(0)
    for _ in range(300):
        row = tasks.make_problem(rng, spec)
        assert int(row["answer"]) == _evaluate(row["prompt"])
        for field in ("solution", "concise"):
            assert correctness_reward(row[field], row["answer"]) == 1.0
            for line in row[field].splitlines()[:-1]:
                lhs, rhs = line.removeprefix("check ").split("=")
                assert eval(lhs) == int(rhs), line
        assert len(row["solution"]) > len(row["concise"])
        assert row["n_operands"] == spec.n_operands


@pytest.mark.parametrize("spec", [tasks.IN_DOMAIN, tasks.OUT_OF_DOMAIN])
def test_running_totals_stay_in_range(spec):
    rng = random.Random(1)
    for _ in range(300):
        row = tasks.make_problem(rng, spec)
        for line in row["concise"].splitlines()[:-1]:
            assert 0 <= int(line.split("=")[1]) <= spec.max_total


def test_shipped_splits_are_disjoint_and_valid(data_dir):
    prompts = {}
    for split in task_files.SPLITS:
        assert task_files.check_file(data_dir / f"{split}.jsonl") > 0
        prompts[split] = {json.loads(l)["prompt"] for l in open(data_dir / f"{split}.jsonl")}
    assert not prompts["train"] & prompts["test"]
    ood = [json.loads(l) for l in open(data_dir / "ood.jsonl")]
    assert all(int(r["prompt"].split()[1][:2]) >= tasks.OUT_OF_DOMAIN.first_low for r in ood)
    totals = [int(line.split("=")[1]) for r in ood for line in r["concise"].splitlines()[:-1]]
    assert max(totals) >= 100, "the ood split should cross 100"


def test_load_split_returns_dataset(data_dir):
    ds = task_files.load_split(data_dir, "test")
    assert {"prompt", "answer"} <= set(ds.column_names)
    assert len(ds) == task_files.check_file(data_dir / "test.jsonl")


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "Compute 1+2.\\n"}', "lacks"),
    ('{"prompt": "", "answer": "3"}', "lacks"),
    ("not json", "not valid JSON"),
    ('["prompt", "answer"]', "expected a JSON object"),
])
def test_bad_row_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "Compute 1+2.\n", "answer": "3"})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(task_files.DataRowError, match=rf"train\.jsonl:2: .*{message}"):
        task_files.load_split(tmp_path, "train")


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-world"):
        task_files.load_split(tmp_path, "test")
    with pytest.raises(ValueError, match="unknown split"):
        task_files.load_split(tmp_path, "validation")
