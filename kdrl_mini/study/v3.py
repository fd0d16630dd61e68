"""Study v3's plan: a world where the methods act within the budget (issue 22), fixed before its runs.

The pilot (``data/study_v3/pilot``, development seeds 1001+) chose what is set here: the shipped
student given 60 more warm-up steps (``models/student-w60``: greedy test ~0.3-0.4 at the rollout
budget), full fp32 weights, an fp32 teacher for scoring, temperature 0.7, 150 steps with a 10-step
warm-up and a cosine learning rate, and each method at the learning rate under which it learns
alone. Every accuracy is greedy at the rollout budget (48 tokens), on the final 1,000 rows of
each split; the 200-row evaluations every 25 steps draw the curves. ``mix`` is drawn like
``train`` (30% of chains cross 100), so ``test`` and ``blind`` are its strata.

The 4-bit NF4 + LoRA student with an 8-bit teacher (QLoRA, the product configuration) is one arm,
so what it costs KDRL is measured, not assumed.
"""

from __future__ import annotations

STUDY_DIR = "data/study_v3"
BETA = 0.02                 # KDRL's KL coefficient (k2 in the loss); >= 0.1 erased `blind` in the pilot
GRPO_LR = 5e-5              # full-weight GRPO: 1e-4 degrades test, 3e-4 collapses (pilot)
FKL_LR = 1e-3
RKL_LR = 3e-4
QLORA_LR = 3e-4
SPLITS = "mix,test,blind,ood"

BASE = {
    "student_path": "data/models/student-w60", "student_quant": "none", "lora_r": 0, "teacher_quant": "none",
    "temperature": 0.7, "max_new_tokens": 48, "max_steps": 150, "lr_schedule": "cosine", "lr_warmup_steps": 10,
    "lr_floor": 0.0, "log_exact_kl": False, "eval_every": 25, "eval_size": 200, "final_eval_size": 1000,
    "eval_extra_tokens": 0, "eval_splits": SPLITS, "eval_batch_size": 500, "checkpoint_every": 25,
}
FKL_SAMPLING = {"kd_fkl_group_size": 2, "kd_fkl_prompts_per_step": 32}  # 64 teacher samples of 32 prompts

VARIANTS = {
    "grpo": {"algorithm": "grpo", "lr": GRPO_LR},
    "kd-fkl": {"algorithm": "kd-fkl", "lr": FKL_LR, **FKL_SAMPLING},
    "kd-rkl": {"algorithm": "kd-rkl", "lr": RKL_LR},
    "kdrl": {"algorithm": "kdrl", "lr": GRPO_LR, "beta": BETA},
    "kdrl-mask": {"algorithm": "kdrl", "lr": GRPO_LR, "beta": BETA, "kd_strategy": "incorrect"},
    "kd-then-grpo": {"algorithm": "kd-then-grpo", "lr": FKL_LR, "grpo_stage_lr": GRPO_LR, **FKL_SAMPLING},
    "kdrl-qlora": {"algorithm": "kdrl", "lr": QLORA_LR, "beta": BETA, "student_quant": "4bit", "lora_r": 16,
                   "lora_alpha": 32, "teacher_quant": "8bit"},
}
PILOT_SEEDS = [1001, 1002]
