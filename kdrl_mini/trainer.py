"""The training loop: collect a rollout, then minimise the algorithm's loss on it.

One step, for every algorithm::

    rollout = collect(prompts)        # sample, reward, teacher log-probs, advantages: once
    for each PPO epoch:
        for each micro-batch:         # student forward, the algorithm's loss, backward
        clip gradients, optimiser step (skipped if anything is non-finite)
    one metrics row (kdrl_mini.runs.metrics schema)

The math lives in :mod:`kdrl_mini.losses` and :mod:`kdrl_mini.advantages`; what each algorithm does is
its record in :mod:`kdrl_mini.algorithms`, whose fields this file reads (it never names an algorithm).
Run folder: ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` (latest state), ``adapter/`` (final weights).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from . import models
from .advantages import group_advantages, informative_groups, sequence_kl_rewards
from .algorithms import ALGORITHMS, Algorithm, LossInputs, Rollout
from .config import TrainConfig
from .kl import FULL_VOCAB_KINDS
from .losses import kd_mask, token_weights
from .rewards import batch_rewards, overlong_penalty
from .evaluation import evaluate_splits, probe_batch, probe_kl
from .rollout import format_prompts, sample
from .runs import checkpoints, folder, metrics
from .runs.loading import PromptSampler, World, load_world
from .sampling_copy import RolloutPolicy
from .schedules import annealed
from .scoring import score_groups, student_token_stats
from .utils import set_threads
from .vocab import vocab_size_of


MAX_BAD_STEPS = 3


class Trainer:
    """Runs one config. ``Trainer(cfg).train()`` does everything.

    ``world`` may be passed in to reuse the loaded teacher and data (notebooks and the study do);
    give it a fresh student for each run: ``dataclasses.replace(world, student=load_student_for(cfg))``.
    """

    def __init__(self, cfg: TrainConfig, world: World | None = None):
        self.cfg = cfg
        self.device = models.pick_device(cfg.device)
        set_threads(cfg.threads, self.device)
        self.world = world or load_world(cfg)
        self.out = Path(cfg.output_dir)
        self.params = [p for p in self.world.student.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.dtype = models.compute_dtype(cfg.compute_dtype, self.device)  # fp32 on CPU
        # fp16 (T4-class cards) needs loss scaling: small gradients would underflow to zero.
        # Start at 2^10, not torch's 2^16: policy-gradient losses are O(1) and a first steps' overflow
        # would skip updates; the scaler grows the scale while no gradient overflows.
        self.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10) if self.dtype == torch.float16 else None
        self.sampler = PromptSampler(len(self.world.train), cfg.seed)
        self.beta_at = annealed(cfg.beta_schedule, cfg.beta, cfg.beta_end, cfg.anneal_steps or cfg.max_steps)
        self.step, self.bad_steps = 0, 0
        self.track_memory = False  # peak memory per phase in self.laps.peaks (kdrl_mini.gpu.smoke)
        self.exact_kl_wanted = self._resolve_log_exact_kl()
        self.loss_inputs = LossInputs.of(cfg)
        self.eval_splits = cfg.eval_split_names() or self.world.eval_splits
        use_copy = cfg.rollout_copy if cfg.rollout_copy is not None else self.device.type == "cpu"
        self.rollout_policy = RolloutPolicy(self.world.student, self.world.teacher, use_copy and cfg.lora_r > 0)
        self.probe = None  # the fixed probe set (evaluation.probe_batch), built at the first evaluation

    @property
    def phase(self) -> str:
        """The algorithm of the current step (kd-then-grpo switches from KD to GRPO)."""
        return self.cfg.algorithm_at(self.step)

    @property
    def algo(self) -> Algorithm:
        """The current step's algorithm record (:data:`kdrl_mini.algorithms.ALGORITHMS`)."""
        return ALGORITHMS[self.phase]

    @property
    def log_exact_kl(self) -> bool:  # on the student's own samples only
        return not self.algo.teacher_samples and self.exact_kl_wanted

    def _resolve_log_exact_kl(self) -> bool:  # None: when one step's [B, T, V] would be small
        c = self.cfg
        small = c.prompts_per_step * c.group_size * c.max_new_tokens * vocab_size_of(self.world.teacher) <= 2**24
        return small if c.log_exact_kl is None else c.log_exact_kl

    # ---------------------------------------------------------------- one step
    @contextmanager
    def sampling_policy(self, training: bool = True):
        """The model to sample from: the teacher for KD-FKL's rollouts, else the student
        (:class:`~kdrl_mini.sampling_copy.RolloutPolicy`)."""
        if training and self.algo.teacher_samples:
            yield self.rollout_policy.teacher_policy()
        else:
            with self.rollout_policy.student_policy() as policy:
                yield policy

    def collect(self, rows: list[dict], beta: float, laps: metrics.Laps) -> Rollout:
        """Sample G responses per prompt, score rewards and (if needed) teacher log-probs, form advantages."""
        cfg, w, algo = self.cfg, self.world, self.algo
        G = cfg.sampling_at(self.step)[1]
        in_loss = algo.teacher_scores
        prompts = format_prompts(w.tokenizer, [r["prompt"] for r in rows], cfg.chat_template, cfg.prompt_suffix)
        answers = [r["answer"] for r in rows for _ in range(G)]
        with self.sampling_policy() as policy, self._autocast():
            batch = sample(policy, w.tokenizer, prompts, G, cfg.max_new_tokens, cfg.temperature)
        correct = batch_rewards(batch.texts, answers, device=self.device, checker=cfg.answer_checker)
        rewards = (batch_rewards(batch.texts, answers, cfg.format_weight, self.device, checker=cfg.answer_checker)
                   if cfg.format_weight else correct)
        laps("rollout")
        teacher_logp, teacher_hidden = None, None
        if in_loss or self.log_exact_kl:
            keep = self.log_exact_kl or (in_loss and cfg.kl_kind in FULL_VOCAB_KINDS)
            with self._autocast():  # kept: the teacher's hidden states, its logits rebuilt chunk by chunk
                teacher_logp, teacher_hidden = score_groups(w.teacher, batch, G, cfg.micro_batch_size, keep_hidden=keep)
        laps("teacher")
        seq_kl = algo.kl_in_reward and cfg.kl_mode == "reward-seq"
        old_logp = None
        if cfg.ppo_epochs > 1 or seq_kl:
            old_logp = self.frozen_logprobs(batch)  # the training forward itself: the first epoch's ratio is exactly 1
        kd_w = kd_mask(rewards, G, cfg.kd_strategy if algo.kd_mask else "all", cfg.kd_threshold)
        if cfg.overlong_cache and algo.rewarded:  # DAPO's length ramp; KD masks keep raw rewards
            rewards = rewards + overlong_penalty(batch.completion_mask.sum(1), batch.truncated,
                                                 cfg.max_new_tokens, cfg.overlong_cache)
        shaped = rewards
        if seq_kl:
            shaped = sequence_kl_rewards(rewards, beta=beta, teacher_logp=teacher_logp, old_logp=old_logp,
                                         mask=batch.completion_mask, kd_weights=kd_w)
        advantages = group_advantages(shaped, G, cfg.adv_scale)
        kept = batch.completion_mask
        if cfg.dynamic_sampling and algo.drops_flat_groups:  # all-equal groups leave the loss and its normaliser
            kept = kept * informative_groups(rewards, G).unsqueeze(-1).to(kept.dtype)
        if cfg.mask_truncated_completions and algo.rewarded:  # DAPO's overlong filtering: cut-off answers leave
            kept = kept * (~batch.truncated).unsqueeze(-1).to(kept.dtype)  # the loss (still in their group's mean)
        weights = token_weights(kept, cfg.loss_agg, cfg.max_new_tokens)
        ref_logp = self.reference_logprobs(batch) if algo.reference_kl and cfg.ref_beta > 0 else None
        return Rollout(batch=batch, rewards=rewards, correct=correct, advantages=advantages, kd_weights=kd_w,
                       weights=weights, old_logp=old_logp, teacher_logp=teacher_logp, teacher_hidden=teacher_hidden,
                       ref_logp=ref_logp)

    def micro_step(self, ro: Rollout, beta: float) -> dict[str, torch.Tensor]:
        """Student forward, loss, backward on one micro-batch; returns summable statistics."""
        logp, loss_kl, stats = self.student_logprobs(ro.batch, ro.teacher_hidden)
        loss, m = self.algo.loss(ro, logp, self.loss_inputs.at(beta, loss_kl))
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        n = ro.mask.sum()
        out = {k: (v if k in metrics.SUMMED else v * n) for k, v in m.items() if k in metrics.TRAIN_KEYS}
        out["loss"] = loss.detach()
        return {**out, **stats}

    @torch.no_grad()
    def reference_logprobs(self, batch) -> torch.Tensor:
        """GRPO's reference log-probs [B, T]: the student's own forward with its LoRA adapter switched off."""
        with self.world.student.disable_adapter():
            return self.frozen_logprobs(batch)

    @torch.no_grad()
    def frozen_logprobs(self, batch) -> torch.Tensor:
        """:meth:`student_logprobs` of the whole batch [B, T], a micro-batch at a time, no graph kept."""
        B, mb = batch.input_ids.shape[0], self.cfg.micro_batch_size or batch.input_ids.shape[0]
        self.world.student.train()
        return torch.cat([self.student_logprobs(batch.rows(slice(i, i + mb)))[0] for i in range(0, B, mb)])

    def student_logprobs(self, batch, teacher_hidden=None):
        """The student's log-probs [B, T] through the token-chunked head (no [B, T, V] tensor); with the
        teacher's hidden states [B, T, H_T] also the logged exact KL and, for an exact / top-k loss, that KL
        per token [B, T], differentiable (else None); and the position sums of entropy and exact KL. Old
        log-probs and the training forward both come from here: pi_old equals pi_theta on the first epoch."""
        cfg = self.cfg
        full = teacher_hidden is not None and self.algo.teacher_scores and cfg.kl_kind in FULL_VOCAB_KINDS
        with self._autocast():
            logp, ent, kl, loss_kl = student_token_stats(
                self.world.student, batch, cfg.temperature, self.world.teacher if teacher_hidden is not None else None,
                teacher_hidden, kl_kind=cfg.kl_kind if full else None, top_k=cfg.top_k, with_kl=self.log_exact_kl)
        m = batch.completion_mask.bool()
        stats = {"entropy_sum": torch.where(m, ent, torch.zeros_like(ent)).sum(), "tokens": m.sum()}
        if kl is not None:
            stats["exact_kl_sum"] = torch.where(m, kl, torch.zeros_like(kl)).sum()
        return logp, loss_kl, stats

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.world
        if self.step > 0 and cfg.algorithm_at(self.step - 1) != self.phase:  # a new stage: a fresh optimiser
            self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.laps = laps = metrics.Laps(self.device, self.track_memory)
        rows = [w.train[i] for i in self.sampler.next(cfg.sampling_at(self.step)[0])]
        beta = self.beta_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        ro = self.collect(rows, beta, laps)
        w.student.train()
        B, mb = ro.rewards.shape[0], cfg.micro_batch_size or ro.rewards.shape[0]
        for _ in range(cfg.ppo_epochs):
            self.opt.zero_grad(set_to_none=True)
            parts = [self.micro_step(ro.rows(slice(i, i + mb)), beta) for i in range(0, B, mb)]
            sums = {k: sum(p[k] for p in parts) for k in parts[0]}
            if self.scaler is not None:
                self.scaler.unscale_(self.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            skipped = self._guarded_update(sums["loss"], grad_norm)
        laps("train")
        self.step += 1
        return metrics.step_row(ro, sums, ALGORITHMS[cfg.algorithm_at(self.step - 1)], self.step, cfg.ppo_epochs,
                                beta=beta, grad_norm=grad_norm, skipped=skipped, laps=laps)

    def _guarded_update(self, loss, grad_norm) -> bool:
        """Optimiser step unless the loss or gradient is non-finite (then skipped and counted). With fp16
        loss scaling an overflowing gradient is the scaler's business; only a non-finite loss counts as bad."""
        if self.scaler is not None and bool(torch.isfinite(loss)):
            self.scaler.step(self.opt)
            self.scaler.update()
            self.bad_steps = 0
            return not bool(torch.isfinite(grad_norm))
        if bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            self.opt.step()
            self.bad_steps = 0
            return False
        self.opt.zero_grad(set_to_none=True)
        self.bad_steps += 1
        if self.bad_steps >= MAX_BAD_STEPS:
            raise FloatingPointError(f"{self.bad_steps} steps in a row had a non-finite loss or gradient (last at "
                                     f"step {self.step + 1}); lower lr (now {self.cfg.lr}) or check the data and models")
        return True

    def _autocast(self):
        """Every forward in the compute dtype: bf16 or fp16 on CUDA; none on CPU (a test may set ``trainer.dtype``)."""
        return models.autocast(self.device, self.dtype)

    @torch.no_grad()
    def evaluate(self, split: str, n: int | None = None) -> dict:  # the eval row of ``split`` now, ``n`` rows
        return self.evaluate_all([split], n)[0]

    @torch.no_grad()
    def evaluate_all(self, names: list[str], n: int | None = None) -> list[dict]:
        """The eval rows of ``names`` now (:func:`~kdrl_mini.evaluation.evaluate_splits`: one decode per split)."""
        with self.sampling_policy(training=False) as policy, self._autocast():
            return evaluate_splits(policy, self.world.tokenizer, self.cfg, self.world.splits, names, self.step, n)

    @torch.no_grad()
    def probe_kl(self) -> torch.Tensor:  # exact KL(student || teacher) per token on the fixed probe set
        w = self.world
        with self._autocast():
            self.probe = self.probe or probe_batch(w.teacher, w.tokenizer, self.cfg, w.splits)
            return probe_kl(w.student, w.teacher, self.probe, self.cfg.eval_batch_size)

    def save_checkpoint(self) -> None:
        checkpoints.save(checkpoints.run_state(self), self.out / "checkpoint.pt")

    def load_checkpoint(self) -> None:
        self.step = checkpoints.restore_run(self, self.out / "checkpoint.pt")
        metrics.truncate_metrics(self.out / "metrics.jsonl", self.step)

    # ---------------------------------------------------------------- the loop
    def train(self, resume: bool = False, progress: bool = True, overwrite: bool = False) -> list[dict]:
        """Run to ``max_steps``; returns all metric rows written (training and eval).

        The output folder must not hold another run unless ``resume`` (continue it) or
        ``overwrite`` (replace it); see :mod:`kdrl_mini.runs.folder`."""
        with folder.claim(self.out, resume, overwrite):
            return self._train(resume, progress)

    def _train(self, resume: bool, progress: bool) -> list[dict]:
        cfg = self.cfg
        if resume:
            self.load_checkpoint()
        else:
            torch.manual_seed(cfg.seed)
        folder.write_config(self.out, cfg)
        log = []
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=cfg.algorithm, disable=not progress)

        def write(row):
            log.append(row)
            metrics.append_row(self.out / "metrics.jsonl", row)

        while self.step < cfg.max_steps:
            row = self.train_step()
            last = self.step == cfg.max_steps
            evaluating = (cfg.eval_every and self.step % cfg.eval_every == 0) or last
            if evaluating and cfg.probe_size:
                row["probe_kl"] = float(self.probe_kl())
            write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", reward=f"{row['reward']:.2f}")
            if evaluating:
                for row in self.evaluate_all(self.eval_splits, cfg.final_eval_size if last else None):
                    write(row)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last:
                self.save_checkpoint()
        bar.close()
        checkpoints.save_final(self.world.student, self.out)
        return log
