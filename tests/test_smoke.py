"""``kdrl-mini smoke --preset NAME`` at toy size on CPU (the shipped tiny pair in place of the preset's
models), the fp16 guard, and the GPU smoke (skipped without CUDA)."""

import json
import math

import pytest
import torch

from kdrl_mini.config import ALGORITHMS
from kdrl_mini.gpu import presets
from kdrl_mini.gpu.presets import fp16_refusal, load_preset


def toy(data_dir):
    """The t4-16gb preset's settings with the tiny world's models and data, tiny budgets, on CPU."""
    return {"student_path": str(data_dir / "models/student"), "teacher_path": str(data_dir / "models/teacher"),
            "dataset": None, "data_dir": str(data_dir), "chat_template": False, "prompt_suffix": "''",
            "answer_checker": "strict", "compute_dtype": "auto", "max_new_tokens": 8, "group_size": 2,
            "prompts_per_step": 2, "micro_batch_size": 2, "lora_r": 4, "device": "cpu"}


def test_smoke_runs_two_steps_per_algorithm_and_writes_the_measurements(data_dir, tmp_path, capsys):
    from kdrl_mini.cli import main

    args = ["smoke", "--preset", "t4-16gb", "--output-dir", str(tmp_path / "smoke"), "--set"]
    args += [f"{k}={'null' if v is None else v}" for k, v in toy(data_dir).items()]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "smoke" / "smoke.json").read_text())
    assert set(report["runs"]) == set(ALGORITHMS)
    for algorithm, run in report["runs"].items():
        assert len(run["steps"]) == 2 and all(math.isfinite(s["loss"]) and s["skipped"] == 0 for s in run["steps"])
        assert set(run["steps"][-1]["peaks"]) == {"generate", "teacher", "train"}, algorithm
        assert run["eval"]["peak"] > 0 and run["eval"]["seconds"] > 0
        assert f"{algorithm}: step seconds" in printed
    assert "GiB measured" in printed and "GiB estimated" in printed


def test_fp16_is_refused_with_the_nan_risk(monkeypatch):
    cfg, _ = load_preset("t4-16gb")
    monkeypatch.delenv("KDRL_ALLOW_FP16", raising=False)
    line = fp16_refusal("t4-16gb", cfg, card_bf16=False)
    assert "NaN" in line and "KDRL_ALLOW_FP16=1" in line and "\n" not in line
    assert "compute_dtype=bf16" in fp16_refusal("t4-16gb", cfg, card_bf16=True)
    assert fp16_refusal("24gb", load_preset("24gb")[0], card_bf16=True) is None
    assert fp16_refusal("24gb", load_preset("24gb", compute_dtype="auto")[0], card_bf16=False) is not None
    monkeypatch.setenv("KDRL_ALLOW_FP16", "1")
    assert fp16_refusal("t4-16gb", cfg, card_bf16=False) is None


@pytest.mark.gpu
@pytest.mark.parametrize("name", presets.preset_names())
def test_smoke_of_a_preset_on_cuda(name, tmp_path):
    """The real smoke: the preset's models and GSM8K (cached, or KDRL_TEST_HUB=1), two steps of each
    algorithm; every measured phase peak must stay within the estimate."""
    from kdrl_mini.gpu import memory as me
    from kdrl_mini.gpu.smoke import smoke

    cfg, info = load_preset(name)
    if torch.cuda.mem_get_info()[1] < info.machine.memory_gib * me.GiB * 0.9:
        pytest.skip(f"this card is smaller than {name}'s")
    report = smoke(name, {}, str(tmp_path / name))
    est = report["estimate"]
    for run in report["runs"].values():
        for phase, peak in run["steps"][-1]["peaks"].items():
            assert peak <= est["always"] + est["phases"][phase], (phase, peak)
