"""A KDRL step through TRL (kdrl_mini.integrations.trl.KDRLTrainer) against the kit's own KDRL step.

    python -m benchmarks.trl_kdrl            # 8 measured rounds, writes benchmarks/trl_kdrl.json
    python -m benchmarks.trl_kdrl --quick    # 2 rounds, tiny batches (smoke; writes nothing unless --out)

Same config for both (mapped by ``config_from_train_config``, as ``kdrl-mini train --engine trl``): full fp32
student (no LoRA), fp32 teacher, k2 KL in the loss, beta 0.05, token-mean aggregation, one PPO epoch, the same
prompts in the same order. Same run: TRL's ``trainer.train()`` drives the loop; a callback times each TRL
optimiser step and, outside that window, runs one ``Trainer.train_step()`` of the kit; both reseeded alike each
round. The first step of each is a warm-up and dropped; the ratio is the median of per-round ratios
(TRL-KDRL time / kit-KDRL time; > 1 means the TRL path is slower).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdrl_mini.config import load_config
from kdrl_mini.runs.loading import PromptSampler
from kdrl_mini.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("trl_kdrl.json")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", default=None, help=f"JSON output (default {OUT.name}; --quick writes nothing unless given)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rounds = a.rounds or (2 if a.quick else 8)
    G, N, T = (4, 2, 16) if a.quick else (8, 8, 48)

    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

    from kdrl_mini.integrations.trl.rewards import correctness_reward_func, load_prompt_dataset
    from kdrl_mini.integrations.trl.trainer import KDRLTrainer
    from kdrl_mini.integrations.trl.launch import config_from_train_config

    tmp = tempfile.mkdtemp(prefix="trl_kdrl_")
    cfg = load_config("kdrl", student_quant="none", teacher_quant="none", lora_r=0, log_exact_kl=False,
                      group_size=G, prompts_per_step=N, max_new_tokens=T, lr=1e-4, temperature=1.0, seed=0,
                      threads=1, output_dir=tmp + "/kit", max_steps=rounds + 1,
                      student_path=str(ROOT / "data/models/student"), teacher_path=str(ROOT / "data/models/teacher"),
                      data_dir=str(ROOT / "data"))
    kit = Trainer(cfg)
    rows = kit.world.train
    sampler = PromptSampler(len(rows), seed=cfg.seed)  # the kit's prompt order, handed to TRL unshuffled
    order = [i for _ in range(rounds + 1) for i in sampler.next(N)]
    full = load_prompt_dataset(str(ROOT / "data/train.jsonl"))
    data = full.select(order)

    times = {"trl_kdrl": [], "kit_kdrl": []}
    kd_kl = {"trl_kdrl": [], "kit_kdrl": []}

    class Interleave(TrainerCallback):
        t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            torch.manual_seed(1000 + state.global_step)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times["trl_kdrl"].append(time.perf_counter() - self.t0)
            torch.manual_seed(1000 + state.global_step - 1)
            t0 = time.perf_counter()
            row = kit.train_step()
            times["kit_kdrl"].append(time.perf_counter() - t0)
            kd_kl["kit_kdrl"].append(float(row.get("kl", float("nan"))))

    kd_args = config_from_train_config(
        cfg, output_dir=tmp + "/trl", shuffle_dataset=False, disable_tqdm=True, top_k=0, top_p=1.0,
        lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, gradient_checkpointing=False,
        teacher_load_in_8bit=False)
    tok = AutoTokenizer.from_pretrained(cfg.student_path)
    student = AutoModelForCausalLM.from_pretrained(cfg.student_path, dtype=torch.float32)
    tr = KDRLTrainer(model=student, reward_funcs=[correctness_reward_func], args=kd_args, train_dataset=data,
                     processing_class=tok, callbacks=[Interleave()])
    tr.remove_callback(PrinterCallback)
    tr.train()
    kd_kl["trl_kdrl"] = [h["kd/kl"] for h in tr.state.log_history if "kd/kl" in h]

    ratios = [t / k for t, k in zip(times["trl_kdrl"][1:], times["kit_kdrl"][1:])]
    result = {
        "what": "TRL-KDRL step time / kit KDRL step time, same config, interleaved in one process",
        "ratio_trl_vs_kit_median": statistics.median(ratios),
        "ratios": ratios, "step_time_s": times, "kd_kl": kd_kl,
        "settings": {"group_size": G, "prompts_per_step": N, "max_new_tokens": T, "rounds": rounds,
                     "student": "fp32 full weights", "teacher": "fp32", "kl": "k2 in the loss, beta 0.05",
                     "threads": 1},
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                    "loadavg": __import__("os").getloadavg(), "torch": torch.__version__,
                    "trl": __import__("trl").__version__},
    }
    out = a.out or (None if a.quick else OUT)
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    print(f"TRL-KDRL / kit-KDRL step time: median {result['ratio_trl_vs_kit_median']:.3f} over {len(ratios)} rounds "
          f"(TRL {statistics.median(times['trl_kdrl'][1:]):.3f} s, kit {statistics.median(times['kit_kdrl'][1:]):.3f} s"
          f" per step); written to {out}")
    return result


if __name__ == "__main__":
    main()
