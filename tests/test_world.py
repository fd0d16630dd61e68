"""The tiny world: its gates (read from the build report) and its task generators (fast, no training).

The gate test reads ``data/models/world_report.json`` (or the file named by the environment
variable ``KDRL_WORLD_REPORT``, to check a world built elsewhere before it is swapped in) and
re-checks every threshold of issue 12 from the measured numbers, not from the report's own flags.
"""

import json
import os
import random
from pathlib import Path

import pytest

from kdrl_mini.tasks import files as task_files
from kdrl_mini.world import task as tasks
from kdrl_mini.rewards import correctness_reward

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path(os.environ.get("KDRL_WORLD_REPORT", ROOT / "data" / "models" / "world_report.json"))
E, B = tasks.EVAL_BUDGET, tasks.BUDGET


@pytest.fixture(scope="module")
def report() -> dict:
    rep = json.loads(REPORT.read_text())
    assert "gates" in rep, f"{REPORT} predates the gated world: rebuild it with `kdrl-mini build-world`"
    return rep


def _acc(report, model, split, budget=E):
    return report[model]["eval"][f"{split}@{budget}"]["accuracy"]


def test_teacher_gates(report):
    assert _acc(report, "teacher", "test") >= 0.95
    assert _acc(report, "teacher", "blind") <= 0.05
    assert _acc(report, "teacher", "ood_control") - _acc(report, "teacher", "ood") >= 0.5


def test_student_gates(report):
    assert 0.15 <= _acc(report, "student", "test") <= 0.30
    blind = report["student"]["eval"][f"blind@{B}"]["sampled"]
    assert 0.02 <= blind["per_sample"] <= 0.15
    assert blind["pass@8"] >= 0.15


def test_length_pressure_binds_the_teacher(report):
    five = report["teacher"]["eval"][f"test@{B}"]["5_operands"]
    assert five["truncated"] >= 0.9


def test_plain_transformers_agrees_with_the_kit(report):
    for model in ("teacher", "student"):
        for key, r in report[model]["eval"].items():
            assert r["kit_accuracy"] == r["accuracy"], (model, key)


def test_models_are_small_and_every_gate_holds(report):
    assert report["teacher"]["size_mb"] + report["student"]["size_mb"] < 25
    assert all(report["split_sizes"][s] >= 1000 for s in task_files.EVAL_SPLITS)
    failed = [g["gate"] for g in report["gates"] if not g["passed"]]
    assert not failed, failed


# ---- task generators -------------------------------------------------------------------------

def _evaluate(prompt: str) -> int:
    expr = prompt.removeprefix("Compute ").strip().rstrip(".")
    assert set(expr) <= set("0123456789+-")
    return eval(expr)  # digits and +/- only (checked above)


def _totals(text: str) -> list[int]:
    return [int(line.split("=")[1]) for line in text.splitlines() if "=" in line and not line.startswith("check")]


def _start(row) -> int:
    return int(row["prompt"].removeprefix("Compute ").replace("-", "+").split("+")[0])


ALL_SPECS = sorted({spec for mix in tasks.MIXES.values() for spec, _ in mix}, key=repr)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    paths = tasks.build_world_data(out, seed=0, n_train=400, n_eval=200)
    return {name: task_files.read_jsonl(p) for name, p in paths.items()}


def test_splits_are_disjoint_and_loadable(small_world, tmp_path_factory):
    names = list(small_world)
    assert set(names) == {"train", *task_files.EVAL_SPLITS}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not {r["prompt"] for r in small_world[a]} & {r["prompt"] for r in small_world[b]}, (a, b)


def test_load_split_knows_every_split(tmp_path):
    tasks.build_world_data(tmp_path, seed=1, n_train=50, n_eval=20)
    for split in ("train",) + task_files.EVAL_SPLITS:  # what a build writes
        assert len(task_files.load_split(tmp_path, split)) == (50 if split == "train" else 20)
    task_files.write_jsonl(tmp_path / "mix.jsonl", task_files.read_jsonl(tmp_path / "test.jsonl")[:3])
    assert set(task_files.KNOWN_SPLITS) == {"train", *task_files.EVAL_SPLITS, "mix"}  # mix: world.extend writes it
    assert len(task_files.load_split(tmp_path, "mix")) == 3


def test_split_definitions(small_world):
    for row in small_world["test"] + small_world["ood_control"]:
        assert max(_totals(row["concise"])) <= 99 and not row["crossing"]
    for row in small_world["blind"] + small_world["ood"]:
        above = [t >= 100 for t in _totals(row["concise"])]
        assert row["crossing"] and above[-1] and above == sorted(above), row
    for name in ("train", "test", "blind"):
        assert all(10 <= _start(r) <= 89 for r in small_world[name])
    for name in ("ood", "ood_control"):
        assert all(90 <= _start(r) <= 99 for r in small_world[name])


def test_train_mix_shares(small_world):
    train = small_world["train"]
    assert sum(r["crossing"] for r in train) == round(len(train) * tasks.TRAIN_CROSSING_SHARE)
    assert sum(r["n_operands"] == 5 for r in train) == len(train) // 2


@pytest.mark.parametrize("spec", ALL_SPECS, ids=repr)
def test_teacher_solutions_drop_the_hundreds(spec):
    rng = random.Random(1)
    for _ in range(200):
        row = tasks.make_problem(rng, spec)
        if not row["crossing"]:
            assert row["teacher"] == row["solution"]
            continue
        assert correctness_reward(row["teacher"], row["answer"]) == 0.0
        assert correctness_reward(row["teacher"], str(int(row["answer"]) % 100)) == 1.0
        assert max(_totals(row["teacher"])) <= 99


def _tokens(text: str) -> int:
    return len(text) + 1  # one token per character, plus EOS


@pytest.mark.parametrize("spec", ALL_SPECS, ids=repr)
def test_budget_binds_verbose_long_chains_not_concise(spec):
    rows = tasks.make_split(300, seed=2, spec=spec)
    concise = [_tokens(r["concise"]) for r in rows]
    verbose = [_tokens(r["solution"]) for r in rows]
    assert max(concise) <= B and max(verbose) <= E
    if spec.n_operands == 5 or spec.crossing:
        assert sum(v > B for v in verbose) / len(rows) >= 0.9
    else:
        assert max(verbose) <= B


def test_budget_binds_the_teacher_on_long_chains_only():
    rows = tasks.make_split(300, seed=3, spec=tasks.IN_DOMAIN_LONG)
    assert sum(_tokens(r["teacher"]) > B for r in rows) / len(rows) >= 0.9
    rows = tasks.make_split(300, seed=3, spec=tasks.IN_DOMAIN)
    assert max(_tokens(r["teacher"]) for r in rows) <= B


def test_mixed_split_is_deterministic():
    mix = tasks.MIXES["train"]
    assert tasks.make_mixed_split(60, 5, mix) == tasks.make_mixed_split(60, 5, mix)
    assert tasks.make_mixed_split(60, 5, mix) != tasks.make_mixed_split(60, 6, mix)
    assert tasks.mix_counts(100, mix) == [35, 35, 15, 15]
    assert sum(tasks.mix_counts(7, mix)) == 7
