"""``KDRLTrainer``: TRL's GRPOTrainer with the teacher's KD term from kdrl_mini's losses."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ...advantages import per_token_kl_advantages
from ...kl import FULL_VOCAB_KINDS, token_kl
from ...losses import kd_mask, reverse_kl_loss
from ...batch import Batch
from ...schedules import annealed
from ...scoring import head_token_stats, score_groups, score_in_micro_batches
from ...vocab import check_same_vocab, cut_at_padding, first_rows_head, restrict_vocab, shared_vocab, vocab_size_of
from ._common import GRPOTrainer
from .config import KD_LOSS_TYPES, KDRLConfig, _refuse, mix_teacher_logps
from .teacher import load_teacher
from .vllm_sync import dense_vllm


# ------------------------------------------------------------------ the trainer
class KDRLTrainer(GRPOTrainer):
    """``GRPOTrainer`` + a frozen teacher + the KD term of KDRL (see the module docstring).

    Args (beyond GRPOTrainer's; everything after ``args`` is keyword-only, so a dataset passed
    fourth cannot land in ``teacher_model``):
        args: a :class:`KDRLConfig`.
        teacher_model: a loaded model, a path, or None (``args.teacher_model_name_or_path``).
        lr_at: the learning rate at each 0-based optimiser step (the kit's ``TrainConfig.lr_at``: warm-up and
            cosine to a floor); None keeps ``args.lr_scheduler_type``.

    Student and teacher are compared on the tokenizer's tokens: a family that pads its embedding
    rows differently (Qwen2.5: 151,936 rows for 1.5B, 152,064 for 7B, 151,665 tokens) has both
    models' logits cut to ``len(processing_class)`` (:func:`kdrl_mini.vocab.restrict_vocab`).
    """

    def __init__(self, model, reward_funcs, args: KDRLConfig, *, teacher_model=None, lr_at=None, **kwargs):
        if not isinstance(args, KDRLConfig):
            raise TypeError(f"KDRLTrainer needs a KDRLConfig, got {type(args).__name__}")
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None:
            _refuse("teacher_model_name_or_path", None, "pass a teacher path here or teacher_model= to KDRLTrainer")
        self._lr_at, self._kd_vocab = lr_at, None
        with dense_vllm() if args.use_vllm else nullcontext():  # vLLM gets dense weights (vllm_sync)
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        if args.adapter_fp32 and hasattr(self.model, "peft_config"):  # undo TRL's bf16 cast of QLoRA adapters
            for p in self.model.parameters():
                if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
                    p.data = p.data.float()
        teachers = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
        if args.teacher_weights is not None and len(args.teacher_weights) != len(teachers):
            _refuse("teacher_weights", args.teacher_weights, f"one weight per teacher ({len(teachers)} teachers)")
        self.teacher_models = [self._load_teacher(t) for t in teachers]
        self.teacher_model = self.teacher_models[0]
        self._cut_to_shared_vocab()
        if args.kl_kind in FULL_VOCAB_KINDS and len(teachers) > 1:
            _refuse("kl_kind", args.kl_kind, "a mixture of teachers needs k1, k2 or k3 (its full distribution would "
                    "be a [B, T, V] tensor)")
        if args.kl_kind in FULL_VOCAB_KINDS and (self.aux_loss_enabled or args.entropy_coef):
            _refuse("kl_kind", args.kl_kind, "full-vocabulary KL with a MoE router aux loss or an entropy bonus "
                    "(entropy_coef) is not supported: its token-chunked head returns the entropy detached")
        steps = args.kd_anneal_steps or max(args.max_steps, 1)
        self._kd_beta_at = annealed(args.kd_beta_schedule, args.kd_beta, args.kd_beta_end, steps)
        self._kd_capture: dict | None = None
        self._kd_last_rewards_per_func: torch.Tensor | None = None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """With ``lr_at``: the kit's schedule, lr(step) = lr_at(step) for the optimiser step about to be taken."""
        if self._lr_at is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        peak = self.args.learning_rate
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                              lambda step: self._lr_at(step) / peak)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # -------------------------------------------------------------- teacher
    def _cut_to_shared_vocab(self) -> None:
        """Cut student and teacher logits to the tokenizer's tokens when their rows differ (padding rows are
        no token), then refuse a pair that still differs (another tokenizer)."""
        student = self.accelerator.unwrap_model(self.model)
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)  # a processor holds its tokenizer
        rows = [vocab_size_of(m) for m in (student, *self.teacher_models)]
        if len(set(rows)) > 1 and tok is not None:
            n = None
            for teacher_rows in rows[1:]:
                n = shared_vocab(tok, rows[0], teacher_rows) or n
            for m in (student, *self.teacher_models):
                restrict_vocab(m, n)
            self._kd_vocab = n
        for t in self.teacher_models:
            check_same_vocab(student, t)

    def _load_teacher(self, teacher):
        return load_teacher(teacher, self.args, self.accelerator, self.is_deepspeed_enabled)

    def kd_beta_now(self) -> float:
        """kd_beta at the current optimiser step."""
        return self._kd_beta_at(self.state.global_step)

    @torch.no_grad()
    def score_teacher(self, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size: int):
        """(teacher log-probs [B, T] of the completions, its final hidden states [B, T, H_T] for exact / top-k KL
        (the loss rebuilds its logits a chunk of tokens at a time) or None).

        Uses ``score_groups`` (each prompt encoded once) when this process holds whole, contiguous groups
        of identical prompts; else plain micro-batched scoring. Both are the kit's own functions. Several
        teachers are mixed per token (``mix_teacher_logps``)."""
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attn = torch.cat([prompt_mask, completion_mask], dim=1)
        batch = Batch(ids, attn, completion_mask.float(), prompt_ids.shape[1], [])
        full = self.args.kl_kind in FULL_VOCAB_KINDS
        B, G = prompt_ids.shape[0], group_size
        whole = G > 1 and B % G == 0 and bool(
            (prompt_ids.view(B // G, G, -1) == prompt_ids[::G].unsqueeze(1)).all()
            and (prompt_mask.view(B // G, G, -1) == prompt_mask[::G].unsqueeze(1)).all())
        mb = self.args.teacher_batch_size or G  # one group per teacher forward unless told otherwise
        scored = [score_groups(t, batch, G, mb, keep_hidden=full) if whole
                  else score_in_micro_batches(t, batch, mb, keep_hidden=full) for t in self.teacher_models]
        if len(scored) == 1:
            return scored[0]
        return mix_teacher_logps([lp for lp, _ in scored], self.args.teacher_weights), None

    # -------------------------------------------------------------- rollout
    def _generate_single_turn(self, *args, **kwargs):
        """TRL's generation, each completion ended before a padding row's id: vLLM samples from every row of
        the output layer, and such an id has no token (the teacher, cut to the tokenizer, cannot score it)."""
        completion_ids, logprobs = super()._generate_single_turn(*args, **kwargs)
        cut = cut_at_padding(completion_ids, self._kd_vocab, logprobs)
        if self._kd_vocab is not None:
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["kd/padding_cut"].append(cut / max(len(completion_ids), 1))
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._kd_last_rewards_per_func = rewards_per_func  # gathered over processes, like TRL's advantages
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        a = self.args
        if a.teacher_unused:  # GRPO without the kd/kl metric: no teacher forward
            return out
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else getattr(self, "num_generations_eval", self.num_generations)
        rpf = self._kd_last_rewards_per_func
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)  # unscorable rows -> 0
        n = out["prompt_ids"].shape[0]
        i = self.accelerator.process_index
        kd_w = kd_mask(rewards, G, a.kd_strategy, a.kd_threshold)[i * n:(i + 1) * n].to(out["advantages"].device)
        mask = self._kd_mask(out)
        t_logp, kept = self.score_teacher(out["prompt_ids"], out["prompt_mask"], out["completion_ids"],
                                          out["completion_mask"], G)
        out["teacher_per_token_logps"], out["kd_weights"] = t_logp, kd_w
        if kept is not None:
            out["teacher_hidden"] = kept
        if a.kl_mode == "reward":
            old = out.get("old_per_token_logps")
            if old is None:  # on-policy: pi_old is the model that just sampled
                with torch.no_grad():
                    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
                    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
                    old = self._get_per_token_logps_and_entropies(
                        self.model, ids, attn, out["completion_ids"].shape[1],
                        batch_size=a.per_device_train_batch_size)[0]
            beta = self.kd_beta_now()
            out["advantages"] = per_token_kl_advantages(out["advantages"], beta, t_logp, old, mask=mask,
                                                        kd_weights=kd_w)
            k1 = token_kl("k1", old, t_logp)
            self._kd_log(mode, k1, mask, kd_w, beta)
        return out

    @staticmethod
    def _kd_mask(inputs) -> torch.Tensor:
        m = inputs["completion_mask"]
        return (m if "tool_mask" not in inputs else m * inputs["tool_mask"]).bool()

    # -------------------------------------------------------------- loss
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's fused LM head (it reads ``lm_head.weight``, bypassing the vocabulary cut's hook) on the student's
        first ``len(tokenizer)`` rows, or the token-chunked exact / top-k KL; the KD term's log-probs captured."""
        base = self.accelerator.unwrap_model(model)
        with first_rows_head(base.get_base_model() if hasattr(base, "get_base_model") else base, self._kd_vocab):
            return self._logps_and_capture(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    def _logps_and_capture(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        cap = self._kd_capture
        if cap is None or not kwargs.get("compute_entropy", False):
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
        if self.args.kl_kind in FULL_VOCAB_KINDS:  # the KL needs the student's full distribution
            extra = [k for k, v in kwargs.items() if v is not None and k not in
                     ("batch_size", "compute_entropy", "compute_aux_loss", "num_images", "num_tiles")]
            if args or extra:
                _refuse("kl_kind", self.args.kl_kind, f"full-vocabulary KL supports text-only inputs (got {extra})")
            return self._token_chunked_kl(model, input_ids, attention_mask, logits_to_keep, cap)
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        cap["logps"] = logps
        return logps, entropies, aux

    def _token_chunked_kl(self, model, input_ids, attention_mask, logits_to_keep, cap):
        """Exact / top-k KL against one teacher without [B, T, V] logits of either model: the student's final
        hidden states (the forward runs through the wrapped model, so DDP sees it) go through
        ``head_token_stats`` a chunk of tokens at a time, beside the teacher's logits rebuilt from its kept
        hidden states; the per-token KL is differentiable (``cap["kl_values"]``)."""
        a = self.args
        with self.accelerator.autocast():
            out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1,
                        output_hidden_states=True, use_cache=False)
            hidden = out.hidden_states[-1][:, -(logits_to_keep + 1):-1]  # the positions predicting the completion
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            logps, entropies, _, kl = head_token_stats(
                head, hidden, input_ids[:, -logits_to_keep:], self.temperature,
                ref_head=self.teacher_model.get_output_embeddings(), ref_hidden=cap["teacher_hidden"],
                kl_kind=a.kl_kind, top_k=a.kl_top_k, with_kl=False)
        cap["logps"], cap["kl_values"] = logps, kl
        return logps, entropies, None

    def kd_token_weights(self, inputs, mask: torch.Tensor) -> torch.Tensor:
        """Per-token weights whose weighted sum reproduces TRL's normaliser for ``loss_type`` (incl. gradient
        accumulation and, for 'dapo', the global token count), passed to ``reverse_kl_loss(weights=...)``."""
        train = self.model.training
        accum = self.current_gradient_accumulation_steps if train else 1.0
        m = mask.to(torch.float32)
        B = m.shape[0]
        lt = self.loss_type
        if lt == "grpo":
            return m / m.sum(-1, keepdim=True).clamp(min=1.0) / B / accum
        if lt == "bnpo":
            return m / m.sum().clamp(min=1.0) / accum
        if lt == "dr_grpo":
            return m / (B * self.max_completion_length) / accum
        if lt == "dapo":
            norm = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if train:
                norm = norm * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return m / norm
        _refuse("loss_type", lt, f"kl_mode='loss' supports {list(KD_LOSS_TYPES)}")

    def _compute_loss(self, model, inputs):
        a = self.args
        if a.kl_mode != "loss" or "teacher_per_token_logps" not in inputs:  # reward mode: the KL is in the advantages
            return super()._compute_loss(model, inputs)
        self._kd_capture = {"teacher_hidden": inputs.get("teacher_hidden")}
        try:
            loss = super()._compute_loss(model, inputs)
            cap = self._kd_capture
        finally:
            self._kd_capture = None
        mask = self._kd_mask(inputs)
        kd, m = self.kd_term(cap["logps"], inputs, mask, cap.get("kl_values"))
        beta = self.kd_beta_now()
        if a.pg_weight == 0:  # KD-RKL: the distillation term alone (TRL's loss only gave the log-probs)
            loss = beta * kd
        elif beta > 0:  # beta = 0 is TRL's GRPO exactly: not even a NaN KL can leak in
            loss = a.pg_weight * loss + beta * kd
        mode = "train" if self.model.training else "eval"
        self._kd_log(mode, m["kl_tokens"], mask, inputs["kd_weights"], beta, kd_loss=m["kd_loss"])
        return loss

    def kd_term(self, logps, inputs, mask, kl_values=None):
        """``reverse_kl_loss`` on TRL's per-token log-probs, aggregated like TRL's policy loss (``kl_values``:
        the token-chunked exact / top-k KL per token). Returns (kd_loss, metrics) with metrics["kl_tokens"]
        the per-token KL (detached) for logging."""
        a = self.args
        kd, m = reverse_kl_loss(logps, inputs["teacher_per_token_logps"], mask, a.kl_kind, top_k=a.kl_top_k,
                                kd_weights=inputs["kd_weights"], weights=self.kd_token_weights(inputs, mask),
                                kl_values=kl_values)
        with torch.no_grad():
            m["kl_tokens"] = (kl_values.detach() if kl_values is not None
                              else token_kl(a.kl_kind, logps.detach(), inputs["teacher_per_token_logps"]))
        return kd, m

    def _kd_log(self, mode, kl_tokens, mask, kd_w, beta, kd_loss=None):
        """Global (all-process, token-weighted) means through TRL's metrics: kd/kl, kd/frac; kd/beta; kd/loss."""
        m = mask.to(torch.float32)
        kl = torch.where(mask, kl_tokens.detach().float(), torch.zeros_like(m))
        frac = (kd_w.to(m.dtype).unsqueeze(-1) * m).sum()
        totals = self.accelerator.reduce(torch.stack([kl.sum(), frac, m.sum()]), reduction="sum")
        count = totals[2].clamp(min=1.0)
        self._metrics[mode]["kd/kl"].append((totals[0] / count).item())
        self._metrics[mode]["kd/frac"].append((totals[1] / count).item())
        self._metrics[mode]["kd/beta"].append(float(beta))
        if kd_loss is not None:  # a micro-batch's share of the step's KD loss; TRL averages what a step appends
            share = kd_loss.detach() * (self.current_gradient_accumulation_steps if mode == "train" else 1)
            self._metrics[mode]["kd/loss"].append(self.accelerator.reduce(share, reduction="mean").item())
