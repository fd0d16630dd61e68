"""The kit's TrainConfig mapped onto KDRLConfig, and the command line that trains the tiny world through TRL (``python -m kdrl_mini.integrations.trl``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ... import model_source, models
from ...utils import vllm_installed
from ...config import TRL_ALGORITHMS, VLLM_MEMORY_SHARE, load_config, parse_set
from ...tasks import source

from .config import KDRLConfig
from .rewards import boxed_format_reward_func, correctness_reward_func, format_reward_func, math_correctness_reward_func
from .trainer import KDRLTrainer


def config_from_train_config(cfg, **overrides) -> KDRLConfig:
    """Map the kit's ``TrainConfig`` (YAML) fields onto a ``KDRLConfig`` for ``kdrl-mini train --engine trl``.

    ``kd-rkl`` is KDRLTrainer with TRL's policy-gradient loss off (``pg_weight=0``, ``kd_beta=1``): the
    reverse KL on the student's own samples, as the kit's ``kd-rkl``. Refuses kit settings the TRL path
    does not reproduce (kd-fkl, kd-then-grpo, several PPO epochs, the sequence-sum reward). The kit's
    learning-rate schedule reaches KDRLTrainer as ``lr_at=cfg.lr_at``. Students (4-bit/8-bit + LoRA through ``peft_config``), data
    (``dataset``), chat templates and prompt suffixes are handled by :func:`train_with_trl`. On CUDA
    with vLLM installed, generation uses vLLM colocated in the training process."""
    if cfg.algorithm not in TRL_ALGORITHMS:
        raise ValueError(f"config field algorithm={cfg.algorithm!r}: --engine trl runs {', '.join(TRL_ALGORITHMS)} "
                         f"only; train it with --engine kit")
    if cfg.kl_mode == "reward-seq":
        raise ValueError("config field kl_mode='reward-seq' is only in the kit's own trainer; use loss or reward")
    if cfg.ppo_epochs != 1:
        raise ValueError(f"config field ppo_epochs={cfg.ppo_epochs}: --engine trl maps only 1 (TRL: num_iterations)")
    kd_only = cfg.algorithm == "kd-rkl"
    agg = {"token-mean": "dapo", "seq-mean": "grpo", "seq-sum-norm": "dr_grpo"}[cfg.loss_agg]
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    dtype = models.compute_dtype(cfg.compute_dtype, torch.device("cuda") if cuda else torch.device("cpu"))
    rollouts = cfg.group_size * cfg.prompts_per_step
    mb = cfg.micro_batch_size or rollouts
    if rollouts % mb:
        raise ValueError(f"config field micro_batch_size={mb}: --engine trl needs it to divide the "
                         f"{rollouts} rollouts of a step (group_size x prompts_per_step)")
    kw = dict(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, learning_rate=cfg.lr, seed=cfg.seed,
        # one generation of all rollouts per optimiser step, trained a micro-batch at a time (accumulated)
        num_generations=cfg.group_size, per_device_train_batch_size=mb, gradient_accumulation_steps=rollouts // mb,
        steps_per_generation=rollouts // mb,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, epsilon=cfg.clip_eps,
        epsilon_high=cfg.clip_eps_high, loss_type=agg, scale_rewards="group" if cfg.adv_scale == "std" else "none",
        max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=cfg.gradient_checkpointing,
        ddp_find_unused_parameters=False,  # every student weight takes part in the loss
        lr_scheduler_type="constant", weight_decay=0.0, top_k=0, top_p=1.0,  # the kit: constant lr, plain sampling
        reward_weights=[1.0, cfg.format_weight] if cfg.format_weight else None,  # reward_funcs_for(cfg)
        beta=0.0, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, report_to=[], logging_steps=1,
        save_strategy="no", use_cpu=not cuda,
        teacher_model_name_or_path=cfg.teacher_path,
        teacher_load_in_8bit=cfg.teacher_quant == "8bit", teacher_load_in_4bit=cfg.teacher_quant == "4bit",
        teacher_model_init_kwargs={"dtype": str(dtype).removeprefix("torch.")},
        pg_weight=0.0 if kd_only else 1.0, log_teacher_kl=cfg.algorithm != "grpo" or bool(cfg.log_exact_kl),
        kd_beta={"kdrl": cfg.beta, "grpo": 0.0, "kd-rkl": 1.0}[cfg.algorithm],
        kd_beta_schedule=cfg.beta_schedule if cfg.algorithm == "kdrl" else "constant",
        kd_beta_end=cfg.beta_end, kd_anneal_steps=cfg.anneal_steps, kl_kind=cfg.kl_kind, kl_top_k=cfg.top_k,
        kl_mode="loss" if kd_only else cfg.kl_mode, kd_strategy=cfg.kd_strategy if cfg.algorithm == "kdrl" else "all",
        kd_threshold=cfg.kd_threshold, teacher_batch_size=cfg.micro_batch_size,
        **vllm_settings(cuda),
    )
    kw.update(overrides)
    return KDRLConfig(**kw)


def process_device(kd_args: KDRLConfig) -> torch.device:
    """This process's device: the CPU, or the CUDA card of its local rank (``accelerate launch``)."""
    return torch.device("cpu") if kd_args.use_cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def vllm_settings(cuda: bool, available: bool | None = None) -> dict:
    """vLLM colocated in the training process when it is installed and a GPU is there (rollouts and
    evaluation at vLLM's speed, weights synced each step by TRL); HF ``generate`` otherwise."""
    available = vllm_installed() if available is None else available
    if not (cuda and available):
        return {"use_vllm": False}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": VLLM_MEMORY_SHARE,
            "vllm_enable_sleep_mode": True}


def peft_config_for(cfg):
    """The kit's LoRA settings (``lora_r``, ``lora_alpha``, every linear) as a peft ``LoraConfig``; None for
    full fine-tuning."""
    if cfg.lora_r == 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def load_student_base(cfg, device: torch.device):
    """The student's base weights as the kit loads them (4-bit/8-bit through bitsandbytes, in the compute
    dtype), frozen when quantised; TRL adds the LoRA adapters from :func:`peft_config_for`."""
    path = model_source.resolve_model(cfg.student_path, "student")
    dtype = models.compute_dtype(cfg.compute_dtype, device)
    with torch.random.fork_rng(devices=[]):  # loading must not move the RNG (parity with the kit's runs)
        model = models.load_causal_lm(path, cfg.student_quant, str(device), role="student", dtype=dtype)
    if cfg.student_quant != "none":
        models.prepare_kbit_student(model)  # TRL turns gradient checkpointing on from its config
        if device.type == "cpu":
            models.disable_cpu_4bit_repacking(model)
    return model, path


def prompt_dataset_for(cfg, tokenizer, rows: int | None = None):
    """The training prompts of ``cfg`` as a ``datasets.Dataset`` with ``prompt`` and ``answer`` columns: the
    tiny world's ``data_dir`` or ``cfg.dataset`` (through :mod:`kdrl_mini.tasks.source`), each prompt with
    ``prompt_suffix`` appended and, with ``chat_template``, as one user turn (TRL applies the template)."""
    if cfg.dataset:
        found = source.load_splits(cfg)["train"].rows
    else:
        found = [json.loads(line) for line in open(Path(cfg.data_dir) / "train.jsonl") if line.strip()]
    return prompt_dataset(cfg, tokenizer, found[:rows] if rows else found)


def prompt_dataset(cfg, tokenizer, found: list[dict]):
    """Rows with ``prompt`` and ``answer`` as the ``datasets.Dataset`` TRL trains on (see :func:`prompt_dataset_for`)."""
    from datasets import Dataset

    if cfg.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but this tokenizer has no chat template; set chat_template: false "
                         "for base models")
    def prompt(text):
        text = text + cfg.prompt_suffix
        return [{"role": "user", "content": text}] if cfg.chat_template else text
    return Dataset.from_list([{"prompt": prompt(r["prompt"]), "answer": str(r["answer"])} for r in found])


# ------------------------------------------------------------------ command line (tiny world)
def build_arg_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m kdrl_mini.integrations.trl",
        description="KDRL through TRL on the tiny world; run under `accelerate launch` for several processes.")
    p.add_argument("--config", default=None, help="kit YAML config / name (as kdrl-mini train --config); mapped "
                   "onto KDRLConfig with student_quant=none, lora_r=0")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--output-dir", default="runs/trl-kdrl")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="kit config fields")
    p.add_argument("--kd", nargs="*", default=[], metavar="KEY=VALUE",
                   help="KDRLConfig / GRPOConfig fields after the mapping (JSON values), "
                        "e.g. per_device_train_batch_size=8")
    p.add_argument("--rows", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--dump-weights", action="store_true", help="each rank saves its trainable weights and log "
                   "(rank<i>.pt / rank<i>.json in --output-dir): the 2-process test compares them")
    return p


def reward_funcs_for(cfg) -> list:
    """The kit's reward as TRL reward functions: correctness, plus the format reward when format_weight != 0
    (weighted through GRPOConfig.reward_weights by ``config_from_train_config``)."""
    math = cfg.answer_checker == "math"
    correct, fmt = ((math_correctness_reward_func, boxed_format_reward_func) if math
                    else (correctness_reward_func, format_reward_func))
    return [correct] + ([fmt] if cfg.format_weight else [])


def train_with_trl(cfg, kd_overrides: dict | None = None, rows: int | None = None,
                   dump_weights: bool = False) -> dict:
    """Train the kit's ``TrainConfig`` on the tiny world through KDRLTrainer (``kdrl-mini train --engine trl``).

    Returns this rank's summary (rank, world_size, steps, per-step kd/kl, kd/beta, reward, loss). With
    ``dump_weights`` each rank also writes ``rank<i>.pt`` (trainable weights) and ``rank<i>.json``."""
    kd_args = config_from_train_config(cfg, **(kd_overrides or {}))
    device = process_device(kd_args)
    model, path = load_student_base(cfg, device)
    tok = models.load_tokenizer(path)
    data = prompt_dataset_for(cfg, tok, rows)
    kd_args.teacher_model_name_or_path = str(model_source.resolve_model(cfg.teacher_path, "teacher"))
    trainer = KDRLTrainer(model=model, reward_funcs=reward_funcs_for(cfg), args=kd_args, train_dataset=data,
                          processing_class=tok, peft_config=peft_config_for(cfg), lr_at=cfg.lr_at)
    trainer.train()
    rank = trainer.accelerator.process_index
    logs = [h for h in trainer.state.log_history if "kd/kl" in h]
    summary = {"rank": rank, "world_size": trainer.accelerator.num_processes, "steps": trainer.state.global_step,
               "kd_kl": [h["kd/kl"] for h in logs], "kd_beta": [h["kd/beta"] for h in logs],
               "reward": [h.get("reward") for h in logs], "loss": [h.get("loss") for h in logs]}
    print(f"[rank {rank}/{summary['world_size']}] finished {summary['steps']} steps; kd/kl per step "
          f"{[round(x, 4) for x in summary['kd_kl']]}", flush=True)
    if dump_weights:
        out = Path(kd_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
                 if v.requires_grad}
        torch.save(state, out / f"rank{rank}.pt")
        (out / f"rank{rank}.json").write_text(json.dumps(summary))
    return summary


def run(argv=None) -> dict:
    """``python -m kdrl_mini.integrations.trl``: parse the flags, then :func:`train_with_trl`."""
    args = build_arg_parser().parse_args(argv)
    torch.set_num_threads(int(os.environ.get("KDRL_THREADS", "1")))
    fields_ = {"student_quant": "none", "lora_r": 0, "max_steps": args.max_steps, "output_dir": args.output_dir,
               **parse_set(args.set)}
    cfg = load_config(args.config or "kdrl", **fields_)
    extra = {}
    for item in args.kd:
        k, _, v = item.partition("=")
        try:
            extra[k] = json.loads(v)
        except json.JSONDecodeError:
            extra[k] = v
    return train_with_trl(cfg, extra, args.rows, args.dump_weights)
