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


def _smoke_args(data_dir, out, *extra):
    args = ["smoke", "--preset", "t4-16gb", "--output-dir", str(out), *extra, "--set"]
    return args + [f"{k}={'null' if v is None else v}" for k, v in toy(data_dir).items()]


def test_smoke_gives_a_verdict_per_phase_with_a_worst_case_step(data_dir, tmp_path, capsys):
    """Two steps of every algorithm, then one forced to the worst-case length (every response max_new_tokens
    long), then an evaluation; per phase the measured time (the last normal step, not the warm-up) and peak
    next to the estimate, a verdict, the generation path, the versions and the study projected from the
    measurements; written to smoke.json."""
    from kdrl_mini.cli import main

    assert main(_smoke_args(data_dir, tmp_path / "smoke")) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "smoke" / "smoke.json").read_text())
    assert set(report["runs"]) == set(ALGORITHMS) and report["verdict"] == "PASS" and report["reasons"] == []
    assert report["generation"] == "HF generate from the fp32 copy" and report["versions"]["torch"] == torch.__version__
    for algorithm, run in report["runs"].items():
        steps = run["steps"]
        assert len(steps) == 3 and all(math.isfinite(s["loss"]) and s["skipped"] == 0 for s in steps)
        assert steps[-1]["response_length"] == 8, algorithm  # the forced worst case
        assert set(steps[-1]["peaks"]) == {"generate", "teacher", "train"}, algorithm
        phases = run["phases"]
        assert set(phases) == {"generate", "teacher", "train", "eval"}
        assert all(p["verdict"] == "pass" and p["seconds"] > 0 and p["estimated_seconds"] >= 0 for p in phases.values())
        assert phases["train"]["seconds"] == steps[1]["laps"]["train"]  # the last normal step's
        assert run["device"]["device"] > 0 and f"{algorithm}: step seconds" in printed
    p = report["projection"]
    assert p["runs"] == 4 and p["measured_hours"] > 0 and p["estimated_hours"] > 0
    assert "verdict: PASS" in printed and "generation HF generate" in printed and "projected from" in printed


def test_smoke_runs_only_the_algorithms_asked_and_keeps_a_folder_that_holds_a_run(data_dir, tmp_path, capsys):
    """--only kdrl runs one algorithm; a second smoke into the same folder is refused in one line naming
    --overwrite (it replaced the first), and so is a folder holding a training run."""
    from kdrl_mini.cli import main

    out = tmp_path / "smoke"
    assert main(_smoke_args(data_dir, out, "--only", "kdrl", "--steps", "1")) == 0
    assert list(json.loads((out / "smoke.json").read_text())["runs"]) == ["kdrl"]
    capsys.readouterr()
    assert main(_smoke_args(data_dir, out, "--only", "kdrl", "--steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a smoke or a run" in err and "--overwrite" in err and "\n" not in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    assert main(_smoke_args(data_dir, run, "--only", "kdrl", "--steps", "1")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(_smoke_args(data_dir, out, "--only", "kdrl", "--steps", "1", "--overwrite")) == 0
    assert main(_smoke_args(data_dir, out, "--only", "nosuch")) == 2
    assert "--only ['nosuch']" in capsys.readouterr().err


def test_the_verdict_fails_an_estimate_too_low_and_flags_one_far_too_high():
    from kdrl_mini.gpu import memory as me
    from kdrl_mini.gpu.smoke_report import memory_verdict

    g = me.GiB
    assert memory_verdict(5 * g, 3 * g, 4 * g, on_cuda=True)[0] == "FAIL"
    assert "estimate too low" in memory_verdict(5 * g, 3 * g, 4 * g, on_cuda=True)[1]
    assert memory_verdict(int(3.5 * g), 3 * g, 4 * g, on_cuda=True)[0] == "pass"
    verdict, why = memory_verdict(1 * g, 3 * g, 4 * g, on_cuda=True)
    assert verdict == "FLAG" and "far too high" in why
    assert memory_verdict(9 * g, 3 * g, 4 * g, on_cuda=False)[0] == "pass"  # a CPU's resident peak is not judged


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
    """The real smoke: the preset's models and GSM8K (cached, or KDRL_TEST_HUB=1), two steps and a worst-case
    step of each algorithm; the verdict must not be FAIL (every phase ran, no measured peak above the
    estimate). t4-16gb runs its fp16-safe setup (fp32 compute), the one the kit accepts on every card."""
    from helpers_hub import preset_sources_reachable
    from kdrl_mini.gpu import memory as me
    from kdrl_mini.gpu.smoke import smoke

    cfg, info = load_preset(name)
    if not preset_sources_reachable(cfg):
        pytest.skip(f"the hub is offline and {name}'s models are not cached (set KDRL_TEST_HUB=1 to download)")
    if torch.cuda.mem_get_info()[1] < info.machine.memory_gib * me.GiB * 0.9:
        pytest.skip(f"this card is smaller than {name}'s")
    report = smoke(name, {"compute_dtype": "fp32"} if name == "t4-16gb" else {}, str(tmp_path / name))
    assert report["verdict"] != "FAIL", report["reasons"]


@pytest.mark.gpu
def test_smoke_of_the_qwen_layout_pair_on_cuda(data_dir, tmp_path_factory):
    """Offline on any card: the smoke of the 24gb preset's settings with the random Qwen2.5-layout pair (4-bit
    student + LoRA, 8-bit teacher, 151,936 / 152,064 rows cut to 151,665) and the tiny world's data, on the
    preset's engine and on TRL (vLLM when installed)."""
    from helpers_qwen_layout import write_pair
    from kdrl_mini.gpu.smoke import smoke

    student, teacher = write_pair(data_dir / "models" / "student", tmp_path_factory.mktemp("pair"))
    fields = {**toy(data_dir), "student_path": str(student), "teacher_path": str(teacher), "device": "cuda",
              "compute_dtype": "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32",
              "gradient_checkpointing": True}
    for engine in ("kit", "trl"):
        report = smoke("24gb", fields, str(tmp_path_factory.mktemp(engine)), steps=1, engine=engine,
                       say=lambda *_: None)
        assert report["verdict"] != "FAIL", (engine, report["reasons"])
