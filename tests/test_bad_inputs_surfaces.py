"""Bad inputs on the surfaces added last: ``--set`` on every command, presets, ``reproduce`` and its
study folders, the TRL engine's resume, and data through ``datasets`` (issue 29, part 3).

The same contract as ``test_bad_inputs.py``, whose helpers this file uses: one clear line (exit code 2
from the CLI, a ``ValueError``/``OSError`` from the library) naming the file, line or field and the fix,
nothing executed from an input, and no file that existed before changed (sha256 before and after).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdrl_mini import commands
from kdrl_mini.config import load_config, parse_set
from kdrl_mini.study import runner, v4
from kdrl_mini.tasks import source
from test_bad_inputs import one_clear_line, recorded_configs, refused, run_main, snapshot

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / v4.STUDY_DIR  # the committed study
TINY = ["group_size=2", "prompts_per_step=1", "max_new_tokens=8", "eval_every=0", "eval_size=2",
        "student_quant=none", "teacher_quant=none"]


# ============================================================================= the CLI, in process
def _damaged_trl_run(tmp: Path) -> None:
    """A TRL run folder with a checkpoint to resume and a config.yaml cut short."""
    (tmp / "trl" / "checkpoint-1").mkdir(parents=True)
    (tmp / "trl" / "config.yaml").write_text("algorithm: [kdrl\n")
    (tmp / "trl" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')


CLI = [  # (id, argv, command, needles)
    ("smoke-unknown-set", ["smoke", "--preset", "t4-16gb", "--set", "nosuch=1"], "smoke", ["'nosuch'", "unknown"]),
    ("reproduce-preset-unknown-set", ["reproduce", "--preset", "t4-16gb", "--dry-run", "--set", "nosuch=1"],
     "reproduce", ["'nosuch'"]),
    ("train-preset-unknown-set", ["train", "--preset", "t4-16gb", "--set", "nosuch=1"], "train", ["'nosuch'"]),
    ("real-pair-unknown-set", ["real-pair", "--set", "lora_rank=4"], "real-pair", ["'lora_rank'", "closest: lora_r"]),
    ("set-typo-closest", ["train", "--config", "kdrl", "--set", "betta=1"], "train", ["'betta'", "closest: beta"]),
    ("set-unclosed-list", ["train", "--config", "kdrl", "--set", "beta=[0.1"], "train", ["beta=[0.1", "YAML"]),
    ("set-python-tag", ["train", "--config", "kdrl", "--set", "lr=!!python/name:os.system"], "train",
     ["lr=!!python/name:os.system", "not a plain YAML value"]),
    ("set-python-apply", ["train", "--config", "kdrl", "--set",
                          "lr=!!python/object/apply:os.system ['touch {tmp}/ran']"], "train", ["not a plain YAML value"]),
    ("reproduce-dry-run-without-preset", ["reproduce", "--dry-run", "--output-dir", "{tmp}/r"], "reproduce",
     ["--dry-run only works with --preset", "drop it"]),
    ("reproduce-set-without-preset", ["reproduce", "--set", "beta=0.1", "--engine", "trl"], "reproduce",
     ["--set and --engine only work with --preset", "drop them"]),
    ("reproduce-full-with-steps", ["reproduce", "--full", "--steps", "3"], "reproduce", ["--steps 3", "--full"]),
    ("preset-dry-run-trl-refusal", ["reproduce", "--preset", "80gb-paper", "--dry-run", "--set", "ppo_epochs=2"],
     "reproduce", ["ppo_epochs=2", "--engine trl"]),
    ("budget-over-context", ["train", "--config", "kdrl", "--output-dir", "{tmp}/run", "--set", *TINY,
                             "max_new_tokens=400"], "train", ["max_new_tokens=400", "context of 256"]),
    ("trl-resume-damaged-config", ["train", "--config", "kdrl", "--engine", "trl", "--resume", "--output-dir",
                                   "{tmp}/trl", "--set", *TINY], "train", ["trl/config.yaml is damaged"]),
]


@pytest.mark.parametrize("argv, command, needles", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_one_line_exit_2(tmp_path, capsys, argv, command, needles):
    _damaged_trl_run(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_main([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2, err
    one_clear_line(err, f"kdrl-mini {command}: error:", *needles)
    assert snapshot(tmp_path) == before and not (tmp_path / "ran").exists()


def test_the_cli_loads_no_hub_library_before_main_sets_the_environment():
    """``kdrl_mini.cli`` imports its handlers with ordinary imports; the rooms' are deferred to where they run,
    so the offline setting ``main`` makes (HF_HUB_OFFLINE, read at import) reaches huggingface_hub and datasets."""
    code = ("import sys, kdrl_mini.cli; print(sorted(m for m in ('huggingface_hub', 'datasets', 'transformers', "
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_set_null_unsets_a_field_from_a_file_as_from_a_preset(tmp_path, monkeypatch, capsys):
    """``--set dataset=null`` unsets the field with --config as with --preset (it was dropped with --config)."""
    seen = recorded_configs(monkeypatch)
    (tmp_path / "x.yaml").write_text("dataset: openai/gsm8k\ndataset_config: main\n")
    for config in (["--config", str(tmp_path / "x.yaml")], ["--preset", "t4-16gb"]):
        code, _ = run_main(["train", *config, "--output-dir", str(tmp_path / "out"), "--set", "dataset=null"], capsys)
        assert code == 2
    assert [c.dataset for c in seen] == [None, None]
    assert commands.with_overrides(tmp_path / "x.yaml", {"dataset": None}).dataset is None
    assert commands.with_overrides(tmp_path / "x.yaml", {}).dataset == "openai/gsm8k"  # without --set the file's value


def test_a_whitespace_value_is_that_text_not_a_dropped_null(tmp_path):
    """``--set prompt_suffix=<newline>`` sets the newline (it read as null and was dropped); ``null`` unsets."""
    assert parse_set(["prompt_suffix=\n", "ood_split=null"]) == {"prompt_suffix": "\n", "ood_split": None}
    assert commands.with_overrides("kdrl", parse_set(["prompt_suffix=\n"])).prompt_suffix == "\n"
    refused(lambda: commands.with_overrides("kdrl", parse_set(["max_new_tokens="])), ValueError,
            "max_new_tokens='' is str; expected int")


# ============================================================================= --set lr=1e-3
ACCEPTED = [  # (id, --set items, field, value): YAML 1.1 reads 1e-3 as text; a float field takes the number
    ("lr-1e-3", ["lr=1e-3"], "lr", 0.001),
    ("beta-5E-2", ["beta=5E-2"], "beta", 0.05),
    ("clip-high-3e-1", ["clip_eps_high=3e-1"], "clip_eps_high", 0.3),
    ("quoted", ["lr='3e-4'"], "lr", 3e-4),
]


@pytest.mark.parametrize("items, field, value", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_a_float_field_takes_a_number_yaml_reads_as_text(tmp_path, items, field, value):
    cfg = load_config("kdrl", **parse_set(items))
    assert getattr(cfg, field) == value and type(getattr(cfg, field)) is float
    (tmp_path / "c.yaml").write_text(items[0].replace("=", ": ") + "\n")
    assert getattr(load_config(tmp_path / "c.yaml"), field) == value  # a file says the same as --set


STRICT = [  # ... and only a float field: a count, a flag or a name stays strict
    ("count-exponent", ["group_size=1e1"], "group_size='1e1' is str; expected int"),
    ("count-quoted", ["max_steps='8'"], "a count: write a whole number"),
    ("float-not-a-number", ["lr=fast"], "lr='fast' is str; expected float"),
    ("float-overflow", ["lr=1e400"], "finite"),
    ("flag-number", ["chat_template=1e-3"], "chat_template='1e-3' is str; expected bool"),
]


@pytest.mark.parametrize("items, needle", [c[1:] for c in STRICT], ids=[c[0] for c in STRICT])
def test_other_fields_stay_strict(items, needle):
    refused(lambda: load_config("kdrl", **parse_set(items)), ValueError, needle)


# ============================================================================= study folders
def _v4_study_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A study v4 folder for ``reproduce --full`` holding one finished run of its plan: the pilot's
    ``grpo-train48`` (study v4's ``grpo`` arm) on seed 1001, filed as ``grpo/seed1``; (study folder, run folder)."""
    out = tmp_path / "study"
    run = out / "runs" / "grpo" / "seed1"
    shutil.copytree(STUDY / "pilot" / "runs" / "grpo-train48" / "seed1001", run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("seed: 1001", "seed: 1"))
    final = json.loads((run / "final.json").read_text())
    (run / "final.json").write_text(json.dumps({**final, "variant": "grpo", "seed": 1}, indent=1))
    for name in ("PREREGISTRATION.md", "untrained.json", "teacher.json"):
        shutil.copy(STUDY / name, out / name)
    return out, run


def error_line(err: str, prog: str, *needles: str) -> None:
    """``err`` holds one error line, starting the line, with every needle (the study's progress bar
    may share stderr, on lines of its own)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:") and "Traceback" not in err, err
    one_clear_line(lines[0], *needles)


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "Trainer", refuse)
    monkeypatch.setattr(runner.engines, "train_run", refuse)


def test_reproduce_full_rebuilds_a_missing_final_json_without_training(tmp_path, capsys, monkeypatch):
    """Data lost before: ``reproduce --full`` retrained the run and replaced its committed metrics.jsonl."""
    out, run = _v4_study_copy(tmp_path)
    committed = json.loads((run / "final.json").read_text())
    (run / "final.json").unlink()
    before = snapshot(run)
    _no_training(monkeypatch)
    code, err = run_main(["reproduce", "--full", "--output-dir", str(out), "--only", "grpo", "--seeds", "1"], capsys)
    assert code == 0, err
    assert json.loads((run / "final.json").read_text()) == committed  # the same numbers, from metrics.jsonl
    assert {k: v for k, v in snapshot(run).items() if k != "final.json"} == before
    assert not (run / runner.WORKER_FILE).exists()


def _cut(path: Path, keep_step: int) -> None:
    rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= keep_step]
    path.write_text("\n".join(rows) + "\n")


STUDY_DAMAGE = [  # (id, damage(run folder), needles): refused in one line, nothing trained or rewritten
    ("config-yaml-damaged", lambda r: (r / "config.yaml").write_text("algorithm: [grpo\n"),
     ["config.yaml is damaged", "restore it"]),
    ("config-yaml-damaged-final-missing", lambda r: ((r / "config.yaml").write_text("- a list\n"),
                                                     (r / "final.json").unlink()), ["config.yaml is damaged"]),
    ("final-json-truncated", lambda r: (r / "final.json").write_text((r / "final.json").read_text()[:40]),
     ["final.json is damaged", "not readable JSON", "metrics.jsonl"]),
    ("final-json-a-list", lambda r: (r / "final.json").write_text("[1, 2]\n"),
     ["final.json is damaged", "name: value"]),
    ("checkpoint-gone-mid-run", lambda r: (_cut(r / "metrics.jsonl", 100), (r / "final.json").unlink()),
     ["reaches step 100 of 150", "checkpoint", "delete the run folder"]),
    ("config-yaml-other-settings", lambda r: (r / "config.yaml").write_text("algorithm: grpo\nlr: 0.1\n"),
     ["other settings for ['lr']"]),
]


@pytest.mark.parametrize("damage, needles", [c[1:] for c in STUDY_DAMAGE], ids=[c[0] for c in STUDY_DAMAGE])
def test_reproduce_full_on_a_damaged_run(tmp_path, capsys, monkeypatch, damage, needles):
    out, run = _v4_study_copy(tmp_path)
    damage(run)
    before = snapshot(out)
    _no_training(monkeypatch)
    code, err = run_main(["reproduce", "--full", "--output-dir", str(out), "--only", "grpo", "--seeds", "1"], capsys)
    assert code == 2, err
    error_line(err, "kdrl-mini reproduce", *needles)
    assert snapshot(out) == before


# ============================================================================= data through datasets
def _rows(n: int = 20) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data" / "train.jsonl").read_text().splitlines()[:n]]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _ragged_csv(rows) -> str:
    lines = ["prompt,answer"] + [f'"{r["prompt"].strip()}",{r["answer"]}' for r in rows]
    lines[8] += ",extra"  # file line 9
    return "\n".join(lines) + "\n"


DATA = [  # (id, file name, text, config fields, needles)
    ("empty-jsonl", "d.jsonl", "", {}, ["d.jsonl: is empty"]),
    ("blank-lines-jsonl", "d.jsonl", "\n\n", {}, ["d.jsonl: is empty"]),
    ("bad-jsonl-line", "d.jsonl", _jsonl(_rows()[:5]) + '{"prompt": "x", \n' + _jsonl(_rows()[5:]), {},
     ["d.jsonl: line 6: not valid JSON"]),
    ("bad-json-document", "d.json", '[\n  {"prompt": "a", "answer": "1"},\n  {"prompt": "b" "answer": "2"}\n]\n', {},
     ["d.json: line 3: not valid JSON"]),
    ("ragged-csv", "d.csv", _ragged_csv(_rows()), {}, ["d.csv: line 9: 3 fields where the header has 2"]),
    ("slice-past-the-end", "d.jsonl", _jsonl(_rows()), {"test_split": "train[150%:]"},
     ["split train[150%:] (config field test_split)", "selects no row of its 20"]),
    ("slice-rows-past-the-end", "d.jsonl", _jsonl(_rows()), {"train_split": "train[25:]"},
     ["config field train_split", "selects no row"]),
    ("slice-stops-before-it-starts", "d.jsonl", _jsonl(_rows()), {"test_split": "train[80%:10%]"},
     ["selects no row"]),
]


@pytest.mark.parametrize("name, text, fields, needles", [c[1:] for c in DATA], ids=[c[0] for c in DATA])
def test_data_file_errors_name_the_line(tmp_path, capfd, name, text, fields, needles):
    path = tmp_path / name
    path.write_text(text)
    cfg = load_config("kdrl", dataset=str(path), **{"test_split": "train[:50%]", **fields})
    refused(lambda: source.load_splits(cfg), ValueError, *needles, folder=tmp_path)
    assert "Failed to" not in capfd.readouterr().err  # no second log line from the reader


def test_a_folder_of_split_files_names_the_broken_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(_jsonl(_rows()))
    (tmp_path / "test.jsonl").write_text(_jsonl(_rows()[:3]) + "not json\n")
    cfg = load_config("kdrl", dataset=str(tmp_path))
    refused(lambda: source.load_splits(cfg), ValueError, "test.jsonl: line 4: not valid JSON", folder=tmp_path)


def test_good_files_still_load(tmp_path):
    """The checks above only speak when the reader fails: a good JSONL and CSV load as before."""
    (tmp_path / "d.jsonl").write_text(_jsonl(_rows()))
    (tmp_path / "d.csv").write_text(_ragged_csv(_rows()).replace(",extra", ""))
    for name in ("d.jsonl", "d.csv"):
        splits = source.load_splits(load_config("kdrl", dataset=str(tmp_path / name), test_split="train[15:]"))
        assert [len(s.rows) for s in splits.values()] == [20, 5]
