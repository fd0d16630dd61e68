"""One run of a kit config trained through TRL, written as the kit's run folder, so that the study
runner, its summaries and the plots read it as they read a run of the kit's own trainer
(``kdrl-mini train --engine trl``; ``reproduce --preset`` on a preset whose engine is ``trl``):

- ``config.yaml``: the config, headed by the code commit and ``# engine: trl``;
- ``metrics.jsonl`` in the kit's schema (:mod:`kdrl_mini.runs.metrics`): a training row per step
  mapped from TRL's log (:data:`FROM_TRL`; what TRL does not log is NaN), then the kit's own greedy
  evaluations (:func:`kdrl_mini.evaluation.evaluate_splits`) every ``eval_every`` steps and after the
  last, on ``final_eval_size`` rows; written by the main process;
- ``checkpoint-<step>/``: TRL's checkpoint (weights, optimiser, schedule, RNG) every
  ``checkpoint_every`` steps, the latest kept; ``resume`` continues from it, dropping the metric
  rows written after its step;
- ``adapter/`` (LoRA) or ``trainable.pt``: the final trainable weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ... import model_source, models
from ...config import TrainConfig
from ...runs import checkpoints, folder, metrics
from ...runs.loading import load_data
from ...tasks.files import EVAL_SPLITS
from ...evaluation import evaluate_splits
from .launch import (config_from_train_config, load_student_base, peft_config_for, process_device, prompt_dataset,
                     reward_funcs_for)
from .trainer import KDRLTrainer

FROM_TRL = {  # the kit's training metric <- TRL's log key
    "reward": "reward", "response_length": "completions/mean_length", "truncated_frac": "completions/clipped_ratio",
    "loss": "loss", "kd_loss": "kd/loss", "kl": "kd/kl", "entropy": "entropy", "clip_frac": "clip_ratio/region_mean",
    "grad_norm": "grad_norm", "step_time": "step_time",
}
KDRL_FROM_TRL = {"beta": "kd/beta", "kd_frac": "kd/frac"}  # the kit logs these for KDRL only


def train_row(logs: dict, step: int, cfg: TrainConfig) -> dict:
    """The kit's training row of ``step`` from TRL's log of that step (the correctness reward's mean is
    ``accuracy``; ``kd_loss`` is the KD term before its coefficient, as in the kit)."""
    names = {**FROM_TRL, "accuracy": f"rewards/{reward_funcs_for(cfg)[0].__name__}/mean"}
    if cfg.algorithm == "kdrl":
        names.update(KDRL_FROM_TRL)
    return metrics.train_row({"step": step, **{k: logs[v] for k, v in names.items() if v in logs}})


class KitMetrics(TrainerCallback):
    """Appends the kit's rows to ``metrics.jsonl`` as TRL trains: each step's training row when TRL logs
    it, then the evaluations due at that step (TRL logs before it saves, so a checkpoint's step already
    has its rows). ``rows`` holds what this run wrote."""

    def __init__(self, cfg: TrainConfig, path: Path, tokenizer, splits: dict, dtype: torch.dtype):
        self.cfg, self.path, self.tokenizer, self.splits, self.dtype = cfg, path, tokenizer, splits, dtype
        self.eval_splits = cfg.eval_split_names() or [s for s in EVAL_SPLITS if s in splits]
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(row)
        metrics.append_row(self.path, row)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:  # the end-of-training summary
            return
        step, cfg = state.global_step, self.cfg
        self.write(train_row(logs, step, cfg))
        last = step == cfg.max_steps
        if (cfg.eval_every and step % cfg.eval_every == 0) or last:
            training = model.training
            with models.autocast(next(model.parameters()).device, self.dtype):
                n = cfg.final_eval_size if last else None
                for row in evaluate_splits(model, self.tokenizer, cfg, self.splits, self.eval_splits, step, n):
                    self.write(row)
            model.train(training)


class StepBar(ProgressCallback):
    """TRL's step bar without its printed log dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class MeasuredTrainer(KDRLTrainer):
    """KDRLTrainer timing each phase of every step and recording its peak memory (``kdrl-mini smoke`` on a
    preset whose engine is trl): ``measured`` gets one {"seconds", "laps", "peaks"} per optimiser step, with
    the phases of :class:`kdrl_mini.runs.metrics.Laps` (rollout, teacher, train)."""

    def __init__(self, *args, measured: list, worst_case_from: int | None = None, **kwargs):
        self.measured, self._micro, self.worst_case_from = measured, 0, worst_case_from
        super().__init__(*args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        if self._micro == 0:  # the first micro-batch of an optimiser step: its generation happens in here
            self._laps = metrics.Laps(self.accelerator.device, track_memory=True)
            if self.worst_case_from is not None and self.state.global_step >= self.worst_case_from:
                self.force_worst_case()
        loss = super().training_step(model, inputs, *args, **kwargs)
        self._laps("train")
        self._micro += 1
        if self._micro == self.args.gradient_accumulation_steps:
            self.measured.append({"seconds": self._laps.total(), "laps": dict(self._laps.laps),
                                  "peaks": dict(self._laps.peaks)})
            self._micro = 0
        return loss

    def force_worst_case(self) -> None:
        """Every later response runs to ``max_completion_length`` (no end-of-sequence before it): the longest
        step the run can take, the one the memory estimate describes."""
        if self.use_vllm:
            self.vllm_generation.generation_kwargs["min_tokens"] = self.max_completion_length
        else:
            self.generation_config.min_new_tokens = self.max_completion_length

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if "rollout" not in self._laps.laps:  # no teacher forward this step (GRPO)
            self._laps("rollout")
        return out

    def score_teacher(self, *args, **kwargs):
        self._laps("rollout")
        scored = super().score_teacher(*args, **kwargs)
        self._laps("teacher")
        return scored


def check_resumable(run: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run whose ``config.yaml`` holds other settings than ``cfg`` (beyond
    ``RESUMABLE_CHANGES``, as the kit's trainer does), or is damaged."""
    changed = folder.config_changes(run, cfg, ignore=checkpoints.RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"--resume: {run / 'config.yaml'} was written with other settings for {changed}; resume "
                         f"with the run's own config or start a new --output-dir")


def train_run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
              measured: list | None = None, worst_case_from: int | None = None) -> list[dict]:
    """Train ``cfg`` (grpo, kd-rkl or kdrl) through :class:`KDRLTrainer` into ``cfg.output_dir`` as the kit's
    run folder (module docstring); ``resume`` continues from the latest ``checkpoint-<step>/``. Returns the
    metric rows this call wrote. Data rows are checked before any weights load. A ``measured`` list gets
    each step's phase times and peaks (:class:`MeasuredTrainer`), its steps from ``worst_case_from`` (0-based)
    forced to the worst-case length."""
    out = Path(cfg.output_dir)
    folder.check(out, resume, overwrite)
    kd_args = config_from_train_config(  # refuses what TRL does not reproduce, before anything loads
        cfg, output_dir=str(out), save_strategy="steps" if cfg.checkpoint_every else "no",
        save_steps=cfg.checkpoint_every or 500, save_total_limit=1, disable_tqdm=not progress)
    try:
        return _train(cfg, kd_args, resume, overwrite, progress, measured, worst_case_from)
    finally:  # the next run of a study or smoke loads its own models (and vLLM checks the free memory)
        models.free_memory()


def _train(cfg: TrainConfig, kd_args, resume: bool, overwrite: bool, progress: bool, measured: list | None,
           worst_case_from: int | None) -> list[dict]:
    """The body of :func:`train_run`, whose frame (the trainer, student and teacher) is gone when it returns."""
    out = Path(cfg.output_dir)
    tok, splits, _ = load_data(cfg)
    with folder.claim(out, resume, overwrite):
        ckpt = folder.latest_checkpoint(out) if resume else None
        if ckpt is not None and ckpt.is_file():
            raise ValueError(f"{ckpt} is a checkpoint of the kit's trainer; resume this run with --engine kit")
        if ckpt is not None:
            check_resumable(out, cfg)
        metrics.truncate_metrics(out / "metrics.jsonl", folder.checkpoint_step(ckpt))
        folder.write_config(out, cfg, engine="trl")
        device = process_device(kd_args)
        torch.manual_seed(cfg.seed)  # the LoRA initialisation, as the kit seeds it
        model, _ = load_student_base(cfg, device)
        kd_args.teacher_model_name_or_path = str(model_source.resolve_model(cfg.teacher_path, "teacher"))
        kit = KitMetrics(cfg, out / "metrics.jsonl", tok, splits, models.compute_dtype(cfg.compute_dtype, device))
        cls, extra = ((KDRLTrainer, {}) if measured is None else
                      (MeasuredTrainer, {"measured": measured, "worst_case_from": worst_case_from}))
        trainer = cls(model=model, reward_funcs=reward_funcs_for(cfg), args=kd_args,
                      train_dataset=prompt_dataset(cfg, tok, splits["train"]), processing_class=tok,
                      peft_config=peft_config_for(cfg), lr_at=cfg.lr_at, callbacks=[kit], **extra)
        for printing in (PrinterCallback, ProgressCallback):  # the kit's rows are the log: TRL's dicts not printed
            trainer.remove_callback(printing)
        if progress:
            trainer.add_callback(StepBar())
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        (out / "README.md").unlink(missing_ok=True)  # TRL's model card, written with each checkpoint
        if trainer.accelerator.is_main_process:
            checkpoints.save_final(trainer.accelerator.unwrap_model(trainer.model), out)
    return kit.rows
