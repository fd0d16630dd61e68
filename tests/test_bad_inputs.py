"""Bad inputs, table-driven: every case is refused with one clear line (exit code 2 from the CLI, a
typed exception from the library), nothing runs from a file, and no file that existed before is
changed (sha256 of every file in the folder compared before and after).

Fast by construction: most cases call the validating function directly; the data cases go through
``load_world``, which checks the rows before any weights load; the trainer cases share one loaded
world; only the cases that need a real process (exit codes, a live lock, a SIGKILL) spawn
``python -m kdrl_mini`` (together, in one fixture).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdrl_mini import models, vocab
from kdrl_mini.runs import checkpoints
from kdrl_mini.runs import metrics
from kdrl_mini.config import TrainConfig, load_config, parse_set
from kdrl_mini.runs.folder import RunFolderError, claim
from kdrl_mini.tasks.files import DataRowError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
STUDENT, TEACHER = DATA / "models" / "student", DATA / "models" / "teacher"
NO_GPU = not torch.cuda.is_available()


# ----------------------------------------------------------------------------- helpers
def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (what must survive a refused input)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_clear_line(msg: str, *needles: str) -> None:
    msg = msg.strip()
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    assert "Traceback" not in msg
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in {msg!r}"


def refused(fn, exc, *needles, folder: Path | None = None):
    """``fn()`` raises ``exc`` with one line holding every needle; ``folder`` is unchanged."""
    before = snapshot(folder) if folder is not None else None
    with pytest.raises(exc) as info:
        fn()
    one_clear_line(str(info.value), *needles)
    if folder is not None:
        after = snapshot(folder)
        assert {k: v for k, v in after.items() if k in before} == before, "an existing file changed"
    return info.value


def small_cfg(out, **kw) -> TrainConfig:
    base = dict(group_size=2, prompts_per_step=1, max_new_tokens=8, max_steps=1, eval_every=0, eval_size=2,
                checkpoint_every=1, output_dir=str(out), student_quant="none", teacher_quant="none", lr=1e-3)
    base.update(kw)
    return load_config("kdrl", **base)


@pytest.fixture(scope="module")
def world():
    """One loaded world (fp32 models) shared by every trainer case."""
    from kdrl_mini.runs.loading import load_world

    return load_world(small_cfg("unused"))


def trainer_for(world, cfg):
    from kdrl_mini.runs.loading import load_student_for
    from kdrl_mini.trainer import Trainer

    return Trainer(cfg, dataclasses.replace(world, student=load_student_for(cfg)))


# ============================================================================= config
CONFIG_YAML = [
    ("group-size-text", 'group_size: "8"\n', "group_size"),
    ("group-size-float", "group_size: 4.0\n", "group_size"),
    ("group-size-bool", "group_size: true\n", "group_size"),
    ("beta-null", "beta: null\n", "beta is empty"),
    ("output-dir-int", "output_dir: 123\n", "output_dir"),
    ("beta-nan", "beta: .nan\n", "finite"),
    ("lr-inf", "lr: .inf\n", "finite"),
    ("kd-threshold-nan", "kd_threshold: .nan\n", "finite"),
    ("beta-negative", "beta: -1\n", ">= 0"),
    ("max-steps-fraction", "max_steps: 2.5\n", "max_steps"),
    ("max-steps-zero", "max_steps: 0\n", ">= 1"),
    ("eval-every-negative", "eval_every: -1\n", ">= 0"),
    ("checkpoint-every-negative", "checkpoint_every: -5\n", ">= 0"),
    ("threads-negative", "threads: -1\n", "threads"),
    ("threads-zero", "threads: 0\n", "threads"),
    ("temperature-zero", "temperature: 0\n", "temperature"),
    ("group-size-one", "group_size: 1\n", "group_size"),
    ("algorithm-unknown", "algorithm: ppo\n", "choose one of"),
    ("kl-kind-unknown", "kl_kind: k4\n", "kl_kind"),
    ("kl-reward-needs-k1", "kl_mode: reward\nkl_kind: k2\n", "kl_kind: k1"),
    ("quant-unknown", "student_quant: 2bit\n", "student_quant"),
    ("full-ft-quantised", "lora_r: 0\n", "lora_r=0"),
    ("schedule-without-end", "beta_schedule: linear\n", "beta_end"),
    ("topk-without-k", "kl_kind: topk\n", "top_k"),
    ("micro-batch-zero", "micro_batch_size: 0\n", "micro_batch_size"),
    ("switch-step-zero", "switch_step: 0\n", "switch_step"),
    ("unknown-field", "betta: 0.1\n", "unknown config field"),
    ("device-unknown", "device: tpu\n", "device"),
    ("yaml-list", "- algorithm\n- kdrl\n", "field: value"),
    ("yaml-scalar", "kdrl\n", "field: value"),
    ("yaml-int", "3\n", "field: value"),
    ("yaml-empty", "", "empty"),
    ("yaml-tab", "algorithm: kdrl\n\tbeta: 1\n", "tabs"),
    ("yaml-python-tag", "beta: !!python/object/apply:os.system ['touch RAN']\n", "!!tags"),
    ("yaml-not-utf8", b"beta: \xff\xfe\n", "YAML"),
]


@pytest.mark.parametrize("text, needle", [c[1:] for c in CONFIG_YAML], ids=[c[0] for c in CONFIG_YAML])
def test_config_file_refused(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(lambda: load_config(path), ValueError, needle, folder=tmp_path)
    assert not (tmp_path / "RAN").exists() and not Path("RAN").exists()


CONFIG_PATHS = [
    ("mistyped-path", lambda tmp: "kdrl_mini/configs/grpoo.yaml", "not found"),
    ("folder", lambda tmp: str(tmp), "is a folder"),
    ("missing-file", lambda tmp: str(tmp / "nope.yaml"), "not found"),
]


@pytest.mark.parametrize("path, needle", [c[1:] for c in CONFIG_PATHS], ids=[c[0] for c in CONFIG_PATHS])
def test_config_path_refused(tmp_path, path, needle):
    refused(lambda: load_config(path(tmp_path)), FileNotFoundError, needle, folder=tmp_path)


@pytest.mark.parametrize("items, needle", [(["beta"], "key=value"), (["=1"], "key=value")], ids=["no-equals", "no-key"])
def test_set_refused(items, needle):
    refused(lambda: parse_set(items), ValueError, needle)


# ============================================================================= CLI (in process)
def run_main(argv, capsys) -> tuple[int, str]:
    from kdrl_mini.cli import main

    try:
        code = main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    return code, capsys.readouterr().err


CLI = [
    ("threads-negative", ["train", "--config", "kdrl", "--threads", "-1"], "train", "--threads"),
    ("threads-zero", ["train", "--config", "kdrl", "--threads", "0"], "train", "--threads"),
    ("eval-n-negative", ["eval", "--student", str(STUDENT), "--n", "-195"], "eval", "--n"),
    ("eval-n-zero", ["eval", "--student", str(STUDENT), "--n", "0"], "eval", "--n"),
    ("max-steps-zero", ["train", "--config", "kdrl", "--max-steps", "0"], "train", "--max-steps"),
    ("max-steps-negative", ["train", "--config", "kdrl", "--max-steps", "-3"], "train", "--max-steps"),
    ("checkpoint-every-negative", ["train", "--config", "kdrl", "--checkpoint-every", "-1"], "train",
     "--checkpoint-every"),
    ("seed-text", ["train", "--config", "kdrl", "--seed", "abc"], "train", "--seed"),
    ("reproduce-steps-zero", ["reproduce", "--steps", "0"], "reproduce", "--steps"),
    ("keep-every-zero", ["real-pair", "--keep-every", "0"], "real-pair", "--keep-every"),
    ("config-folder", ["train", "--config", "{tmp}"], "train", "is a folder"),
    ("config-missing", ["train", "--config", "{tmp}/typo/grpo.yaml"], "train", "not found"),
    ("output-dir-file", ["train", "--config", "kdrl", "--output-dir", "{tmp}/afile"], "train", "is a file"),
    ("reproduce-output-dir-file", ["reproduce", "--output-dir", "{tmp}/afile"], "reproduce", "is a file"),
    ("set-no-equals", ["train", "--config", "kdrl", "--set", "beta"], "train", "key=value"),
    ("set-unknown-field", ["train", "--config", "kdrl", "--set", "betta=1"], "train", "unknown config field"),
    ("set-nan", ["train", "--config", "kdrl", "--set", "lr=.nan"], "train", "finite"),
    ("device-cuda-without-gpu", ["train", "--config", "kdrl", "--set", "device=cuda", "--output-dir", "{tmp}/run"],
     "train", "cuda"),
    ("eval-run-not-a-run", ["eval", "--run", "{tmp}"], "eval", "not a run folder"),
    ("existing-run-without-resume", ["train", "--config", "kdrl", "--output-dir", "{tmp}/done"], "train",
     "already holds a run"),
    ("resume-without-checkpoint", ["train", "--config", "kdrl", "--output-dir", "{tmp}/empty", "--resume"], "train",
     "no checkpoint"),
    ("resume-and-overwrite", ["train", "--config", "kdrl", "--output-dir", "{tmp}/done", "--resume", "--overwrite"],
     "train", "--overwrite"),
]


@pytest.mark.parametrize("argv, command, needle", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_refuses_with_exit_code_2(tmp_path, capsys, monkeypatch, argv, command, needle):
    if "cuda" in needle and not NO_GPU:
        pytest.skip("a GPU is present")
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    code, err = run_main([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2, err
    one_clear_line(err, f"kdrl-mini {command}: error:", needle)
    assert snapshot(tmp_path) == before


def recorded_configs(monkeypatch) -> list:
    """The configs the CLI hands the kit's trainer from now on (each then stops with exit code 2)."""
    seen = []

    class Recorder:
        def __init__(self, cfg, world=None):
            seen.append(cfg)
            raise ValueError("recorded")

    monkeypatch.setattr("kdrl_mini.engines.Trainer", Recorder)
    return seen


def test_cli_checkpoint_every_reaches_the_config(monkeypatch, capsys):
    seen = recorded_configs(monkeypatch)
    assert run_main(["train", "--config", "kdrl", "--checkpoint-every", "3", "--output-dir", "/nonexistent/x"],
                    capsys)[0] == 2
    assert run_main(["train", "--config", "kdrl", "--set", "checkpoint_every=4", "--output-dir", "/nonexistent/y"],
                    capsys)[0] == 2
    assert [c.checkpoint_every for c in seen] == [3, 4]


# ============================================================================= data
def _copy_data(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name in ("train.jsonl", "test.jsonl", "ood.jsonl"):
        shutil.copy(DATA / name, d / name)
    return d


def _edit_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


def _set_field(field, value):
    def edit(raw: bytes) -> bytes:
        row = json.loads(raw)
        row[field] = value
        return json.dumps(row).encode()
    return edit


def _replace(old: bytes, new: bytes):
    return lambda raw: raw.replace(old, new, 1)


DATA_CASES = [
    ("non-utf8-train", "train.jsonl", 5, _replace(b"Compute", b"Comp\xffute"), "train.jsonl:5", "UTF-8"),
    ("non-utf8-test", "test.jsonl", 1, _replace(b"Compute", b"\xc3\x28Compute"), "test.jsonl:1", "UTF-8"),
    ("latin1-answer", "ood.jsonl", 7, lambda raw: raw.replace(b'"answer": "', b'"answer": "\xe9', 1),
     "ood.jsonl:7", "UTF-8"),
    ("whitespace-answer", "train.jsonl", 3, _set_field("answer", "   "), "train.jsonl:3", "whitespace"),
    ("tab-newline-answer", "test.jsonl", 2, _set_field("answer", "\t\n"), "test.jsonl:2", "whitespace"),
    ("whitespace-prompt", "train.jsonl", 9, _set_field("prompt", " \n "), "train.jsonl:9", "whitespace"),
    ("unk-accent-answer", "train.jsonl", 4, _set_field("answer", "4é"), "train.jsonl:4", "'é'"),
    ("unk-emoji-prompt", "test.jsonl", 3, _set_field("prompt", "Compute 1+1 \U0001F600\n"), "test.jsonl:3", "<unk>"),
    ("unk-cjk-prompt", "ood.jsonl", 2, _set_field("prompt", "计算 12+3\n"), "ood.jsonl:2", "<unk>"),
    ("prompt-longer-than-context", "train.jsonl", 6, _set_field("prompt", "Compute " + "1+" * 150 + "1.\n"),
     "train.jsonl:6", "context"),
    ("prompt-one-megabyte", "train.jsonl", 8, _set_field("prompt", "1+" * 500_000), "train.jsonl:8", "context"),
    ("not-json", "train.jsonl", 2, lambda raw: raw[:-5], "train.jsonl:2", "JSON"),
    ("json-array", "test.jsonl", 4, lambda raw: b"[1, 2]", "test.jsonl:4", "JSON object"),
    ("missing-answer", "train.jsonl", 10, lambda raw: json.dumps({"prompt": "Compute 1+2.\n"}).encode(),
     "train.jsonl:10", "answer"),
    ("answer-a-number", "train.jsonl", 11, _set_field("answer", 42), "train.jsonl:11", "answer"),
    ("nul-bytes", "test.jsonl", 5, lambda raw: b"\x00" * 10, "test.jsonl:5", "JSON"),
    ("utf8-bom", "train.jsonl", 1, lambda raw: b"\xef\xbb\xbf" + raw, "train.jsonl:1", ""),
]


def _data_cfg(tmp_path, data_dir):
    return small_cfg(tmp_path / "run", data_dir=str(data_dir))


@pytest.mark.parametrize("name, lineno, edit, where, needle", [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_bad_data_rows_name_file_and_line(tmp_path, name, lineno, edit, where, needle):
    from kdrl_mini.runs.loading import load_world

    d = _copy_data(tmp_path)
    _edit_line(d / name, lineno, edit)
    t0 = time.time()
    refused(lambda: load_world(_data_cfg(tmp_path, d)), DataRowError, where, needle, folder=d)
    assert time.time() - t0 < 30  # a 1 MB prompt is refused, not tokenised for minutes


def test_empty_and_missing_data_files(tmp_path):
    from kdrl_mini.runs.loading import load_world

    d = _copy_data(tmp_path)
    (d / "test.jsonl").write_text("\n\n")
    refused(lambda: load_world(_data_cfg(tmp_path, d)), DataRowError, "test.jsonl", "no rows", folder=d)
    (d / "train.jsonl").unlink()
    refused(lambda: load_world(_data_cfg(tmp_path, d)), FileNotFoundError, "train.jsonl", folder=d)


def test_data_checks_direct(tokenizer):
    from kdrl_mini.tasks.checks import check_rows

    rows = [{"prompt": "Compute 1+2.\n", "answer": "3"}, {"prompt": "Compute 2+2.\n", "answer": "4"}]
    check_rows(rows, "x.jsonl", tokenizer, 256)  # good rows pass
    refused(lambda: check_rows(rows + [{"prompt": "Compute ü.\n", "answer": "1"}], "x.jsonl", tokenizer, 256),
            DataRowError, "x.jsonl:3", "'ü'")
    refused(lambda: check_rows(rows, "x.jsonl", tokenizer, 10), DataRowError, "x.jsonl:1", "context")


# ============================================================================= models
def _model_copy(tmp_path, src=STUDENT, name="model") -> Path:
    folder = tmp_path / name
    shutil.copytree(src, folder)
    return folder


def _auto_map(folder: Path, marker: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Model", "AutoTokenizer": ["evil.Tok", None]}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


MODEL_CASES = [
    ("auto-map-student", lambda f, m: _auto_map(f, m), lambda f: models.load_student(f, "none", None), ValueError,
     "never runs code"),
    ("auto-map-teacher", lambda f, m: _auto_map(f, m), lambda f: models.load_teacher(f, "none"), ValueError,
     "never runs code"),
    ("auto-map-check-dir", lambda f, m: _auto_map(f, m), lambda f: models.check_model_dir(f, "teacher"), ValueError,
     "auto_map"),
    ("missing-folder", lambda f, m: shutil.rmtree(f), lambda f: models.check_model_dir(f, "student"),
     FileNotFoundError, "does not exist"),
    ("no-config-json", lambda f, m: (f / "config.json").unlink(), lambda f: models.check_model_dir(f, "student"),
     FileNotFoundError, "config.json"),
    ("no-weights", lambda f, m: (f / "model.safetensors").unlink(), lambda f: models.check_model_dir(f, "student"),
     FileNotFoundError, "safetensors"),
    ("config-not-json", lambda f, m: (f / "config.json").write_text("{oops"), lambda f: models.check_model_dir(f, "x"),
     ValueError, "not valid JSON"),
    ("config-a-list", lambda f, m: (f / "config.json").write_text("[1]"), lambda f: models.check_model_dir(f, "x"),
     ValueError, "JSON object"),
    ("config-not-utf8", lambda f, m: (f / "config.json").write_bytes(b"{\xff}"),
     lambda f: models.check_model_dir(f, "x"), ValueError, "config.json"),
    ("truncated-safetensors", lambda f, m: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000]), lambda f: models.load_teacher(f, "none"), ValueError,
     "model.safetensors"),
    ("empty-safetensors", lambda f, m: (f / "model.safetensors").write_bytes(b""),
     lambda f: models.load_teacher(f, "none"), ValueError, "cannot be loaded"),
    ("tokenizer-swapped-ids", lambda f, m: _swap_tokens(f), lambda f: vocab.check_same_tokenizer(STUDENT, f),
     ValueError, "differs from the student"),
]


def _swap_tokens(folder: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))


@pytest.mark.parametrize("damage, call, exc, needle", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_folders(tmp_path, damage, call, exc, needle):
    folder = _model_copy(tmp_path)
    marker = tmp_path / "ran"
    damage(folder, marker)
    err = refused(lambda: call(folder), exc, needle, folder=tmp_path)
    if exc is ValueError and "model.safetensors" not in needle and "tokenizer" not in str(err):
        assert str(folder) in str(err)
    assert not marker.exists()


DEVICES = [("cuda-without-gpu", "cuda"), ("cuda-index-without-gpu", "cuda:7"), ("not-a-device", "tpu"),
           ("empty-ish", "gpu0")]


@pytest.mark.parametrize("device", [c[1] for c in DEVICES], ids=[c[0] for c in DEVICES])
def test_unusable_device(device):
    if device.startswith("cuda") and not NO_GPU:
        pytest.skip("a GPU is present")
    refused(lambda: models.pick_device(device), ValueError, "device", repr(device))


# ============================================================================= checkpoints
@pytest.fixture(scope="module")
def good_ckpt(world, tmp_path_factory):
    """A real finished 1-step run (checkpoint, metrics, config) to damage and resume."""
    out = tmp_path_factory.mktemp("good") / "run"
    trainer_for(world, small_cfg(out)).train(progress=False)
    return out


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


CKPT_DAMAGE = [
    ("planted-pickle", lambda p, m: p.write_bytes(pickle.dumps({"step": 1, "x": _Payload(m)})), ValueError,
     "cannot be read safely"),
    ("planted-pickle-in-zip", lambda p, m: torch.save({"step": 1, "x": _Payload(m)}, p), ValueError,
     "cannot be read safely"),
    ("truncated", lambda p, m: p.write_bytes(p.read_bytes()[:100]), ValueError, "damaged"),
    ("zero-bytes", lambda p, m: p.write_bytes(b""), ValueError, "damaged"),
    ("random-bytes", lambda p, m: p.write_bytes(os.urandom(4096)), ValueError, "damaged"),
    ("text-file", lambda p, m: p.write_text("hello\n"), ValueError, "damaged"),
    ("a-folder", lambda p, m: (p.unlink(), p.mkdir()), FileNotFoundError, "no checkpoint"),
]


@pytest.mark.parametrize("damage, exc, needle", [c[1:] for c in CKPT_DAMAGE], ids=[c[0] for c in CKPT_DAMAGE])
def test_damaged_or_planted_checkpoint(tmp_path, good_ckpt, damage, exc, needle):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    marker = tmp_path / "ran"
    damage(run / "checkpoint.pt", marker)
    refused(lambda: checkpoints.load(run / "checkpoint.pt"), exc, needle, folder=run)
    assert not marker.exists()


def test_planted_pickle_through_resume_runs_nothing(tmp_path, world, good_ckpt):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    marker = tmp_path / "ran"
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"step": 1, "x": _Payload(marker)}))
    cfg = small_cfg(run, max_steps=2)
    refused(lambda: trainer_for(world, cfg).train(resume=True, progress=False), ValueError, "cannot be read safely",
            folder=run)
    assert not marker.exists()


RESUME_MISMATCH = [
    ("changed-algorithm", dict(algorithm="grpo"), ValueError, "other settings for ['algorithm']"),
    ("changed-lora-rank", dict(lora_r=4, lora_alpha=8), ValueError, "other settings"),
    ("changed-seed", dict(seed=7), ValueError, "['seed']"),
]


@pytest.mark.parametrize("change, exc, needle", [c[1:] for c in RESUME_MISMATCH], ids=[c[0] for c in RESUME_MISMATCH])
def test_resume_with_other_settings(tmp_path, world, good_ckpt, change, exc, needle):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    cfg = small_cfg(run, max_steps=2, **change)
    refused(lambda: trainer_for(world, cfg).train(resume=True, progress=False), exc, needle, folder=run)


def test_checkpoint_of_another_student_is_refused(tmp_path, world, good_ckpt):
    state = checkpoints.load(good_ckpt / "checkpoint.pt")
    trainer = trainer_for(world, small_cfg(tmp_path / "x", lora_r=4, lora_alpha=8))
    refused(lambda: checkpoints.load_trainable(trainer.world.student, state["trainable"], "ck.pt"), ValueError,
            "ck.pt", "shape")
    refused(lambda: checkpoints.load_trainable(trainer.world.student, {"nope.weight": torch.zeros(1)}, "ck.pt"),
            ValueError, "unknown weights")


def _fail_with(code):
    def boom(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return boom


DISK = [
    ("enospc", errno.ENOSPC, "no space left"),
    ("edquot", errno.EDQUOT, "no space left"),
    ("eacces", errno.EACCES, "not writable"),
    ("erofs", errno.EROFS, "not writable"),
    ("eperm", errno.EPERM, "not writable"),
]


@pytest.mark.parametrize("code, needle", [c[1:] for c in DISK], ids=[c[0] for c in DISK])
def test_checkpoint_save_on_a_full_or_read_only_disk(tmp_path, good_ckpt, monkeypatch, code, needle):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    state = checkpoints.load(run / "checkpoint.pt")

    def partial_then_fail(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", partial_then_fail)
    err = refused(lambda: checkpoints.save(state, run / "checkpoint.pt"), OSError, needle,
                  str(run / "checkpoint.pt"), folder=run)
    assert isinstance(err, OSError)
    assert not list(run.glob("*.tmp")), "a half-written temporary file was left behind"


@pytest.mark.parametrize("target", ["metrics", "config", "checkpoint"])
def test_trainer_writes_on_a_full_disk(tmp_path, world, good_ckpt, monkeypatch, target):
    """Whatever the trainer is writing when the disk fills, one line names the file; the last good
    checkpoint and the metrics already written are untouched."""
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    cfg = small_cfg(run, max_steps=2)
    trainer = trainer_for(world, cfg)
    if target == "metrics":
        monkeypatch.setattr(metrics, "json_line", _fail_with(errno.ENOSPC))
        name = "metrics.jsonl"
    elif target == "config":
        monkeypatch.setattr("kdrl_mini.runs.folder.yaml.safe_dump", _fail_with(errno.ENOSPC))
        name = "config.yaml"
    else:
        monkeypatch.setattr(torch, "save", _fail_with(errno.ENOSPC))
        name = "checkpoint.pt"
    before = snapshot(run)
    refused(lambda: trainer.train(resume=True, progress=False), OSError, "no space left", name)
    assert snapshot(run)["checkpoint.pt"] == before["checkpoint.pt"]
    assert not list(run.glob("*.tmp"))
    assert not (run / ".lock").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_folder(tmp_path, good_ckpt):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    state = checkpoints.load(run / "checkpoint.pt")
    run.chmod(0o555)
    try:
        refused(lambda: checkpoints.save(state, run / "checkpoint.pt"), OSError, "not writable", folder=run)
    finally:
        run.chmod(0o755)


def test_nan_weights_are_never_written_over_a_good_checkpoint(tmp_path, world, good_ckpt):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    trainer = trainer_for(world, small_cfg(run, max_steps=2))
    with torch.no_grad():
        trainer.params[0].fill_(float("nan"))
    refused(trainer.save_checkpoint, FloatingPointError, "non-finite", folder=run)


def test_inf_gradients_never_reach_a_checkpoint(tmp_path, world):
    run = tmp_path / "run"
    trainer = trainer_for(world, small_cfg(run, max_steps=5, checkpoint_every=1))
    first = trainer.params[0]
    first.register_hook(lambda g: g * float("inf"))
    refused(lambda: trainer.train(progress=False), FloatingPointError, "3 steps in a row", "non-finite")
    state = checkpoints.load(run / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    rows = metrics.read_metrics(run)[0]
    assert [r["skipped"] for r in rows] == [1.0, 1.0]  # the third raised before its row was written


# ============================================================================= run folders & metrics
def _torn(path: Path):
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 2, "rew')


def test_torn_last_metrics_line_does_not_block_resume(tmp_path, world, good_ckpt):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    _torn(run / "metrics.jsonl")
    trainer_for(world, small_cfg(run, max_steps=2)).train(resume=True, progress=False)
    steps, _ = metrics.read_metrics(run)
    assert [r["step"] for r in steps] == [1, 2]


def test_read_metrics_drops_a_torn_last_line(tmp_path, good_ckpt):
    run = tmp_path / "run"
    shutil.copytree(good_ckpt, run)
    whole = metrics.read_metrics(run)
    _torn(run / "metrics.jsonl")
    assert metrics.read_metrics(run) == whole


METRICS_DAMAGE = [
    ("corrupt-middle-line", lambda p: p.write_text('{"kind": "train", "step": 1}\ngarbage\n{"kind": "train", "step": 2}\n'),
     "metrics.jsonl:2"),
    ("row-without-step", lambda p: p.write_text('{"kind": "train"}\n{"kind": "train", "step": 2}\n'),
     "metrics.jsonl:1"),
    ("row-not-an-object", lambda p: p.write_text('[1, 2]\n{"kind": "train", "step": 2}\n'), "metrics.jsonl:1"),
]


@pytest.mark.parametrize("damage, needle", [c[1:] for c in METRICS_DAMAGE], ids=[c[0] for c in METRICS_DAMAGE])
def test_damaged_metrics_are_named_not_rewritten(tmp_path, damage, needle):
    path = tmp_path / "metrics.jsonl"
    damage(path)
    refused(lambda: metrics.truncate_metrics(path, 1), ValueError, needle, folder=tmp_path)
    refused(lambda: metrics.read_metrics(tmp_path), ValueError, needle, folder=tmp_path)


RUN_FOLDER = [
    ("a-file", lambda f: f.write_text("x"), dict(), "is a file"),
    ("holds-metrics", lambda f: (f.mkdir(), (f / "metrics.jsonl").write_text("{}\n")), dict(), "already holds a run"),
    ("holds-checkpoint", lambda f: (f.mkdir(), (f / "checkpoint.pt").write_bytes(b"x")), dict(), "already holds a run"),
    ("live-lock", lambda f: (f.mkdir(), (f / ".lock").write_text(str(os.getppid()))), dict(), "in use by another"),
    ("live-lock-resume", lambda f: (f.mkdir(), (f / ".lock").write_text(str(os.getppid())),
                                    (f / "checkpoint.pt").write_bytes(b"x")), dict(resume=True), "in use by another"),
    ("resume-and-overwrite", lambda f: (f.mkdir(), (f / "metrics.jsonl").write_text("{}\n")),
     dict(resume=True, overwrite=True), "--overwrite"),
    ("resume-empty", lambda f: f.mkdir(), dict(resume=True), "no checkpoint"),
]


@pytest.mark.parametrize("prepare, flags, needle", [c[1:] for c in RUN_FOLDER], ids=[c[0] for c in RUN_FOLDER])
def test_run_folder_refused(tmp_path, prepare, flags, needle):
    folder = tmp_path / "run"
    prepare(folder)
    before = snapshot(tmp_path)

    def enter():
        with claim(folder, **flags):
            pass

    refused(enter, (RunFolderError, FileNotFoundError), needle)
    assert snapshot(tmp_path) == before
    if "lock" not in folder.name and folder.is_dir() and (folder / ".lock").exists():
        assert (folder / ".lock").read_text() == str(os.getppid())  # someone else's lock is left alone


def test_a_stale_or_garbled_lock_is_taken_over(tmp_path):
    for i, content in enumerate(("999999999", "not a pid", "")):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / ".lock").write_text(content)
        with claim(folder):
            assert (folder / ".lock").read_text() == str(os.getpid())
        assert not (folder / ".lock").exists()


# ============================================================================= maths
@pytest.mark.parametrize("d", [-88.0, -89.0, -100.0, -1000.0, -1e6, -1e20])
def test_k3_is_finite_for_very_negative_log_ratios(d):
    from kdrl_mini.kl import kl_estimate

    logp = torch.tensor([d], requires_grad=True)
    k = kl_estimate(logp, torch.zeros(1), "k3")
    k.sum().backward()
    assert torch.isfinite(k).all() and k.item() > 0
    assert torch.isfinite(logp.grad).all() and logp.grad.item() < 0  # pushes the log-ratio up


def test_k3_is_exact_above_the_switch_and_continuous_at_it():
    from kdrl_mini.kl import K3_LINEAR_BELOW, kl_estimate

    d = torch.tensor([-20.0, -1.0, 0.0, 1e-4, 3.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(kl_estimate(d, torch.zeros_like(d), "k3"), torch.exp(-d) - 1 + d)
    c = torch.tensor([K3_LINEAR_BELOW, K3_LINEAR_BELOW - 1e-3], dtype=torch.float64, requires_grad=True)
    k = kl_estimate(c, torch.zeros_like(c), "k3")
    k.sum().backward()
    assert abs(k[0] - k[1]) / k[0] < 1e-2 and abs(c.grad[0] - c.grad[1]) / abs(c.grad[0]) < 1e-6


def test_k3_keeps_nan_and_gives_inf_for_minus_inf():
    from kdrl_mini.kl import kl_estimate

    k = kl_estimate(torch.tensor([float("nan"), float("-inf")]), torch.zeros(2), "k3")
    assert torch.isnan(k[0]) and k[1] == float("inf")


def _kl(fn):
    from kdrl_mini import kl

    return lambda: fn(kl)


MATHS = [
    ("unknown-estimator", _kl(lambda kl: kl.kl_estimate(torch.zeros(2), torch.zeros(2), "k4")), "k4"),
    ("shape-mismatch", _kl(lambda kl: kl.exact_kl(torch.zeros(2, 5), torch.zeros(2, 6))), "differ"),
    ("top-k-zero", _kl(lambda kl: kl.exact_kl(torch.zeros(2, 5), torch.zeros(2, 5), top_k=0)), "top_k"),
    ("bad-direction", _kl(lambda kl: kl.exact_kl(torch.zeros(2, 5), torch.zeros(2, 5), "sideways")), "direction"),
    ("exact-without-logits", _kl(lambda kl: kl.token_kl("exact", torch.zeros(1, 2), torch.zeros(1, 2))), "logits"),
    ("topk-without-k", _kl(lambda kl: kl.token_kl("topk", torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, 3),
                                                  ref_logits=torch.zeros(1, 2, 3))), "top_k"),
    ("unknown-kind", _kl(lambda kl: kl.token_kl("k9", torch.zeros(1, 2), torch.zeros(1, 2))), "k9"),
]


@pytest.mark.parametrize("call, needle", [c[1:] for c in MATHS], ids=[c[0] for c in MATHS])
def test_maths_refuses_bad_arguments(call, needle):
    refused(call, ValueError, needle)


def test_exact_kl_with_nan_logits_is_nan_and_padding_nan_gives_no_nan_gradient():
    from kdrl_mini.kl import exact_kl
    from kdrl_mini.losses import reverse_kl_loss

    assert torch.isnan(exact_kl(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))).all()
    logits = torch.zeros(1, 3, 4)
    logits[0, 2] = float("nan")  # padding position
    logits.requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    logp = torch.log_softmax(logits.detach(), -1)[..., 0]
    loss, _ = reverse_kl_loss(logp, logp, mask, "exact", logits=logits, teacher_logits=torch.ones(1, 3, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ============================================================================= processes
def _cli(*argv, cwd=ROOT, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "kdrl_mini", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


TINY = ["--set", "group_size=2", "prompts_per_step=1", "max_new_tokens=8", "eval_every=0", "eval_size=2",
        "student_quant=none", "teacher_quant=none"]


@pytest.fixture(scope="module")
def processes(tmp_path_factory, good_ckpt):
    """Start every process case at once (they mostly wait on imports), then collect them."""
    tmp = tmp_path_factory.mktemp("proc")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    busy = tmp / "busy"
    shutil.copytree(good_ckpt, busy)
    (busy / ".lock").write_text(str(sleeper.pid))
    planted = tmp / "planted"
    shutil.copytree(good_ckpt, planted)
    marker = tmp / "ran"
    (planted / "checkpoint.pt").write_bytes(pickle.dumps({"step": 1, "x": _Payload(marker)}))
    cases = {
        "threads": (_cli("train", "--config", "kdrl", "--threads", "-1"), tmp, "train", "--threads"),
        "eval-n": (_cli("eval", "--student", str(STUDENT), "--n", "-195"), tmp, "eval", "--n"),
        "locked": (_cli("train", "--config", str(busy / "config.yaml"), "--resume", "--max-steps", "2",
                         "--output-dir", str(busy)), busy,
                   "train", "in use by another trainer"),
        "planted": (_cli("eval", "--run", str(planted)), planted, "eval", "cannot be read safely"),
    }
    snaps = {k: snapshot(c[1]) for k, c in cases.items()}
    out = {}
    try:
        for k, (proc, folder, command, needle) in cases.items():
            stdout, stderr = proc.communicate(timeout=180)
            out[k] = (proc.returncode, stderr, snaps[k], folder, command, needle)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not marker.exists()
    return out


@pytest.mark.parametrize("case", ["threads", "eval-n", "locked", "planted"])
def test_process_exit_code_2_one_line(processes, case):
    code, stderr, before, folder, command, needle = processes[case]
    assert code == 2, stderr
    lines = [l for l in stderr.splitlines() if l.startswith("kdrl-mini")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    one_clear_line(lines[0], f"kdrl-mini {command}: error:", needle)
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before


def test_sigkill_then_rerun_is_refused_and_resume_continues(tmp_path):
    """A run killed after its first checkpoint: a re-run without --resume is refused (nothing
    replaced), and --resume finishes it."""
    out = tmp_path / "run"
    proc = _cli("train", "--config", "kdrl", "--output-dir", str(out), "--max-steps", "40", "--checkpoint-every",
                "1", *TINY)
    deadline = time.time() + 150
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert (out / "checkpoint.pt").exists()
    before = snapshot(out)
    again = _cli("train", "--config", "kdrl", "--output-dir", str(out), "--max-steps", "3", "--checkpoint-every", "1",
                 *TINY)
    _, stderr = again.communicate(timeout=180)
    assert again.returncode == 2 and "Traceback" not in stderr
    one_clear_line([l for l in stderr.splitlines() if l.startswith("kdrl-mini")][0], "already holds a run")
    assert snapshot(out) == before
    from kdrl_mini.trainer import Trainer

    step = checkpoints.load(out / "checkpoint.pt")["step"]
    Trainer(load_config(out / "config.yaml", max_steps=step + 1)).train(resume=True, progress=False)
    assert [r["step"] for r in metrics.read_metrics(out)[0]] == list(range(1, step + 2))
