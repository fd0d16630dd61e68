"""One-GPU guards checked on CPU (issue 31): rollout_copy refused for models on a card (the meta device stands
in for CUDA), and the memory of one run released before the next run in the same process."""

import gc
import weakref

import pytest
import torch

from kdrl_mini import models
from kdrl_mini.gpu import preset_study
from kdrl_mini.gpu.presets import estimate_preset, load_preset
from kdrl_mini.sampling_copy import RolloutPolicy


def test_rollout_copy_is_refused_for_models_on_a_card(data_dir):
    """rollout_copy: true built its fp32 copy on the CPU whatever the device (sampling then ran on the CPU and met
    a CUDA teacher): refused in one line for models off the CPU, and before anything loads for a preset."""
    student = models.load_student(data_dir / "models/student", "none", models.LoraSpec(r=2, alpha=4), device="cpu")
    teacher = models.load_teacher(data_dir / "models/teacher", "none", device="cpu")
    assert RolloutPolicy(student, teacher, use_copy=True).copy is not None  # on the CPU: the fast path
    student.to("meta"), teacher.to("meta")
    with pytest.raises(ValueError, match=r"^rollout_copy: true builds an fp32 copy of the models on the CPU, but they "
                                         r"are on meta; set rollout_copy: false") as err:
        RolloutPolicy(student, teacher, use_copy=True)
    assert "\n" not in str(err.value)
    assert RolloutPolicy(student, teacher, use_copy=False).copy is None
    cfg, info = load_preset("24gb", rollout_copy=True)
    est, _ = estimate_preset(cfg, info, use_source=False)
    with pytest.raises(ValueError, match="on cuda; set rollout_copy: false"):
        preset_study.memory_check("24gb", est, cfg, free_bytes=23 * 2**30)


def test_a_trl_run_hands_its_teacher_back_when_it_ends(tmp_path, monkeypatch):
    """The study and the smoke train run after run in one process: a finished TRL run's trainer, teacher and
    vLLM engine are released (cycles collected, CUDA's cache emptied) before the next run loads its own.
    Automatic garbage collection is off here, so only the run's own release can free them."""
    pytest.importorskip("trl")
    from kdrl_mini.config import load_config
    from kdrl_mini.integrations.trl import kit_run

    seen = []
    real = kit_run.KDRLTrainer._load_teacher

    def recording(self, teacher):
        loaded = real(self, teacher)
        seen.append(weakref.ref(loaded))
        return loaded

    monkeypatch.setattr(kit_run.KDRLTrainer, "_load_teacher", recording)
    cfg = load_config("kdrl", group_size=2, prompts_per_step=2, max_new_tokens=4, max_steps=1, eval_every=0,
                      checkpoint_every=0, eval_size=2, eval_splits="test", lora_r=2, threads=1,
                      output_dir=str(tmp_path / "run"))
    gc.collect()
    gc.disable()
    try:
        kit_run.train_run(cfg, progress=False)
        assert seen and seen[0]() is None, "the finished run's teacher is still alive"
    finally:
        gc.enable()
