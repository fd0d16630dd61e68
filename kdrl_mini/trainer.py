"""The training loop: rollout -> rewards -> teacher scores -> loss -> optimiser, for every algorithm.

The math lives in :mod:`kdrl_mini.losses`; this file only moves tensors between the models and
those functions, logs metrics (``metrics.jsonl``), evaluates and checkpoints. One loop serves
GRPO, KD-FKL, KD-RKL and KDRL: the algorithm is a config choice.

Run folder layout::

    config.yaml        the resolved TrainConfig
    metrics.jsonl      one JSON line per step (and eval lines with "split")
    checkpoint.pt      latest state: adapter/trainable weights, optimiser, RNG, step
    adapter/           final trainable weights (peft adapter folder when LoRA is used)
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from . import losses, models, tasks
from .config import TrainConfig
from .rewards import batch_rewards
from .rollout import Batch, format_prompts, greedy_eval, sample, token_logprobs
from .kl import exact_kl
from .schedules import make_schedule

NEEDS_TEACHER_LOGITS = ("exact", "topk")


@dataclass
class World:
    """What a run trains on: student, teacher, tokenizer and the task splits."""

    student: object
    teacher: object
    tokenizer: object
    train: list[dict]
    test: list[dict]
    ood: list[dict]


def load_student_for(cfg: TrainConfig):
    """A freshly initialised trainable student for ``cfg`` (LoRA init seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    lora = models.LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.lora_r > 0 else None
    return models.load_student(cfg.student_path, cfg.student_quant, lora, cfg.device)


def load_world(cfg: TrainConfig) -> World:
    """Load models and data named by ``cfg`` (checks paths, rows and vocabularies)."""
    tok = models.load_tokenizer(models.check_model_dir(cfg.student_path, "student"))
    student = load_student_for(cfg)
    teacher = models.load_teacher(cfg.teacher_path, cfg.teacher_quant, cfg.device)
    models.check_same_vocab(student, teacher, tok)
    splits = {s: [dict(r) for r in tasks.load_split(cfg.data_dir, s)] for s in tasks.SPLITS}
    return World(student, teacher, tok, splits["train"], splits["test"], splits["ood"])


class PromptSampler:
    """Seeded epoch-wise shuffling over the train prompts; its state is two integers."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order()

    def _order(self):
        self.order = list(range(self.n))
        random.Random(self.seed * 100003 + self.epoch).shuffle(self.order)

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order()
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict):
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order()


def _trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean per-token entropy  H_t = -sum_v p log p  over masked positions; logits [B, T, V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)
    return float((ent * mask).sum() / mask.sum().clamp(min=1))


class Trainer:
    """Runs one config. ``Trainer(cfg).train()`` does everything.

    ``world`` may be passed in to reuse the loaded teacher and data (notebooks and the study do);
    give it a fresh student for each run: ``dataclasses.replace(world, student=load_student_for(cfg))``.
    """

    def __init__(self, cfg: TrainConfig, world: World | None = None):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.world = world or load_world(cfg)
        self.out = Path(cfg.output_dir)
        self.params = [p for p in self.world.student.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.sampler = PromptSampler(len(self.world.train), cfg.seed)
        self.beta_at = make_schedule(cfg.beta_schedule, cfg.beta, cfg.beta_end, cfg.max_steps)
        self.step = 0

    # ---------------------------------------------------------------- one step
    def rollout(self, rows: list[dict]) -> tuple[Batch, torch.Tensor]:
        """Sample completions (the teacher's for kd-fkl, else the student's) and their rewards."""
        cfg, w = self.cfg, self.world
        prompts = format_prompts(w.tokenizer, [r["prompt"] for r in rows], cfg.chat_template)
        policy = w.teacher if cfg.algorithm == "kd-fkl" else w.student
        policy.eval()
        with models.merged_lora(policy):
            batch = sample(policy, w.tokenizer, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature)
        answers = [r["answer"] for r in rows for _ in range(cfg.group_size)]
        return batch, batch_rewards(batch.texts, answers, format_weight=cfg.format_weight)

    @torch.no_grad()
    def teacher_scores(self, batch: Batch):
        """Teacher log-probs of the sampled tokens [B, T], and logits [B, T, V] when needed."""
        want_logits = self.cfg.kl_kind in NEEDS_TEACHER_LOGITS or self.cfg.log_teacher_kl
        out = token_logprobs(self.world.teacher, batch, return_logits=want_logits)
        return out if want_logits else (out, None)

    def loss(self, batch: Batch, rewards, old_logp, teacher_logp, teacher_logits, beta):
        """Student forward + the algorithm's loss; returns (loss, metrics, student logits)."""
        cfg = self.cfg
        logp, logits = token_logprobs(self.world.student, batch, return_logits=True)
        mask = batch.completion_mask
        old = logp.detach() if old_logp is None else old_logp
        use_logits = cfg.kl_kind in NEEDS_TEACHER_LOGITS
        if cfg.algorithm == "kd-fkl":
            loss, m = losses.forward_kl_loss(logp, mask, loss_agg=cfg.loss_agg)
        elif cfg.algorithm == "kd-rkl":
            loss, m = losses.reverse_kl_loss(
                logp, teacher_logp, mask, kind=cfg.kl_kind, logits=logits if use_logits else None,
                teacher_logits=teacher_logits if use_logits else None, top_k=cfg.top_k, loss_agg=cfg.loss_agg)
        else:
            loss, m = losses.kdrl_loss(
                logp, old, teacher_logp, rewards, mask, cfg.group_size,
                beta=beta if cfg.algorithm == "kdrl" else 0.0, kl_kind=cfg.kl_kind, kl_mode=cfg.kl_mode,
                kd_strategy=cfg.kd_strategy, kd_threshold=cfg.kd_threshold, clip_eps=cfg.clip_eps,
                clip_eps_high=cfg.clip_eps_high, loss_agg=cfg.loss_agg, adv_scale=cfg.adv_scale,
                logits=logits if use_logits else None, teacher_logits=teacher_logits if use_logits else None,
                top_k=cfg.top_k)
        return loss, m, logits

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.world
        t0 = time.perf_counter()
        rows = [w.train[i] for i in self.sampler.next(cfg.prompts_per_step)]
        batch, rewards = self.rollout(rows)
        t_roll = time.perf_counter()
        needs_teacher = cfg.algorithm in ("kd-rkl", "kdrl") or cfg.log_teacher_kl
        teacher_logp, teacher_logits = self.teacher_scores(batch) if needs_teacher else (None, None)
        if teacher_logp is None:  # the losses still take a tensor; GRPO ignores it at beta=0
            teacher_logp = torch.zeros_like(batch.completion_mask)
        t_teacher = time.perf_counter()
        beta = self.beta_at(self.step)
        self.world.student.train()
        old_logp = None
        if cfg.ppo_epochs > 1:  # with one pass, pi_old = pi_theta and the ratio is exactly 1
            with torch.no_grad():
                old_logp = token_logprobs(w.student, batch)
        for _ in range(cfg.ppo_epochs):
            loss, m, logits = self.loss(batch, rewards, old_logp, teacher_logp, teacher_logits, beta)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
        t_end = time.perf_counter()
        mask = batch.completion_mask
        n_tok = float(mask.sum())
        metrics = {
            "step": self.step + 1,
            "reward": float(rewards.mean()),
            # without a format term the reward is the correctness; only otherwise score again
            "accuracy": float(rewards.mean() if not cfg.format_weight else batch_rewards(
                batch.texts, [r["answer"] for r in rows for _ in range(cfg.group_size)]).mean()),
            "response_length": float(mask.sum(1).mean()),
            "loss": float(loss.detach()),
            "beta": float(beta) if cfg.algorithm == "kdrl" else 0.0,
            "entropy": entropy_from_logits(logits.detach(), mask),
            "grad_norm": float(grad_norm),
            "step_time": t_end - t0,
            "rollout_time": t_roll - t0,
            "teacher_time": t_teacher - t_roll,
            "train_time": t_end - t_teacher,
            "rollout_tok_s": n_tok / max(t_roll - t0, 1e-9),
            "train_tok_s": n_tok * cfg.ppo_epochs / max(t_end - t_teacher, 1e-9),
        }
        if cfg.algorithm == "kd-fkl":  # these describe the teacher's samples, not the student
            for k in ("reward", "accuracy", "response_length"):
                metrics["teacher_" + k] = metrics.pop(k)
        metrics.update({k: float(v) for k, v in m.items()})
        if not needs_teacher:  # the loss saw a placeholder teacher; its KL is meaningless
            metrics.pop("kl", None)
        if cfg.algorithm != "kdrl":  # nothing is distilled through the KD mask
            metrics.pop("kd_frac", None)
            metrics.pop("kd_masked_frac", None)
        if teacher_logits is not None and "exact_kl" not in m:
            ekl = exact_kl(logits.detach(), teacher_logits)
            metrics["exact_kl"] = float((ekl * mask).sum() / mask.sum().clamp(min=1))
        self.step += 1
        return metrics

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str, n: int | None = None) -> dict:
        """Greedy accuracy and mean response length on the first ``n`` rows of a split."""
        rows = getattr(self.world, split)[: n or self.cfg.eval_size]
        r = greedy_eval(self.world.student, self.world.tokenizer, rows, max_new_tokens=self.cfg.max_new_tokens + 16,
                        chat_template=self.cfg.chat_template)
        return {"step": self.step, "split": split, "eval_accuracy": r["accuracy"], "eval_length": r["mean_length"]}

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "trainable": _trainable_state(self.world.student),
            "optimizer": self.opt.state_dict(),
            "sampler": self.sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
            "config": self.cfg.to_dict(),
        }
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")  # atomic: a kill never leaves half a checkpoint

    def load_checkpoint(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}; start without --resume, or point "
                                    f"--output-dir at the folder of the interrupted run")
        state = torch.load(path, map_location="cpu", weights_only=False)
        load_trainable(self.world.student, state["trainable"], path)
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.load(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(state["python_rng"])
        self.step = state["step"]
        _truncate_metrics(self.out / "metrics.jsonl", self.step)

    # ---------------------------------------------------------------- the loop
    def train(self, resume: bool = False, progress: bool = True) -> list[dict]:
        """Run to ``max_steps``; returns all metric lines written (steps and evals)."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if resume:
            self.load_checkpoint()
        else:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            torch.manual_seed(cfg.seed)
        log = []
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"{cfg.algorithm}", disable=not progress)
        with open(self.out / "metrics.jsonl", "a") as f:
            def write(line):
                log.append(line)
                f.write(json.dumps(line) + "\n")
                f.flush()

            while self.step < cfg.max_steps:
                m = self.train_step()
                write(m)
                bar.update(1)
                bar.set_postfix(reward=f"{m.get('reward', m.get('teacher_reward', 0.0)):.2f}", kl=f"{m.get('exact_kl', m.get('kl', 0.0)):.3f}")
                last = self.step == cfg.max_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    for split in ("test", "ood"):
                        write(self.evaluate(split))
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last:
                    self.save_checkpoint()
        bar.close()
        self.save_adapter()
        return log

    def save_adapter(self) -> None:
        student = self.world.student
        if hasattr(student, "peft_config"):
            student.save_pretrained(str(self.out / "adapter"))
        else:
            torch.save(_trainable_state(student), self.out / "trainable.pt")


def load_trainable(model, trainable: dict, source) -> None:
    """Copy a checkpoint's trainable weights (adapters or full) into a freshly loaded model."""
    named = dict(model.named_parameters())
    unknown = sorted(set(trainable) - set(named))
    if unknown:
        raise ValueError(f"checkpoint {source} does not match this student (unknown weights {unknown[:3]}...); "
                         f"load it with the same config it was written with")
    with torch.no_grad():
        for n, v in trainable.items():
            named[n].copy_(v)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint's step (they will be recomputed)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        if line.strip() and json.loads(line)["step"] <= step:
            keep.append(line)
    path.write_text("".join(l + "\n" for l in keep))


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(step lines, eval lines) of a run folder's ``metrics.jsonl``."""
    lines = [json.loads(l) for l in open(Path(run_dir) / "metrics.jsonl") if l.strip()]
    return [l for l in lines if "split" not in l], [l for l in lines if "split" in l]
