"""What a training step costs: kdrl_mini vs TRL's GRPOTrainer, KDRL vs GRPO, and weight memory.

    python -m benchmarks.step_cost            # full run (~4 min on 2 cores), writes benchmarks/results.json
    python -m benchmarks.step_cost --quick    # CI smoke (< 60 s): tiny batches, shipped sizes only

Timing. Every case lives in this one process and they take turns step by step, so a neighbour
job that slows the machine slows them all alike. TRL's ``trainer.train()`` drives the loop: a
callback times each TRL optimiser step (``on_step_begin`` -> ``on_step_end``), then runs one
``Trainer.train_step()`` of every kdrl_mini case (order rotated each round) outside that window.
Each round reseeds torch identically for every case and all cases see the same prompts, so they
sample comparable completions. The first step of every case is a warm-up and is dropped; a ratio
is the median over rounds of that round's ratio.

Memory. Each (size, precision) case loads its student + teacher in a fresh subprocess, runs one
KDRL forward/backward on 8 sequences and reports the bytes its weights hold and its peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kdrl_mini import losses, models, utils
from kdrl_mini.config import load_config
from kdrl_mini.rewards import correctness_reward
from kdrl_mini.rollout import teacher_forced_batch, token_logprobs
from kdrl_mini.trainer import PromptSampler, Trainer

ROOT = Path(__file__).resolve().parents[1]
STUDENT, TEACHER, DATA = ROOT / "data/models/student", ROOT / "data/models/teacher", ROOT / "data"
RESULTS = Path(__file__).with_name("results.json")
SEED = 1000
LORA = models.LoraSpec(r=16, alpha=32)  # all-linear, no dropout: the shipped configs' adapter
# name: (algorithm, student_quant, teacher_quant); GRPO never runs the teacher (log_teacher_kl=False)
OURS = {
    "grpo_fp32": ("grpo", "none", "none"),
    "kdrl_fp32": ("kdrl", "none", "none"),
    "grpo_quantised": ("grpo", "4bit", "8bit"),
    "kdrl_quantised": ("kdrl", "4bit", "8bit"),
}
PIECES = "kdrl_quantised_pieces"  # a second shipped-default KDRL trainer, stepped piece by piece
# The larger size for the memory study (random weights): hidden sizes are multiples of 64 because
# bitsandbytes' 4-bit CPU path needs them (see models._refuse_misaligned_4bit).
LARGE = {"student": dict(hidden_size=1024, num_hidden_layers=8),
         "teacher": dict(hidden_size=1024, num_hidden_layers=16)}
TARGETS = {"ours_vs_trl": 0.8, "kdrl_vs_grpo_quantised": 1.25, "kdrl_vs_grpo_fp32": 1.25,
           "weights_quantised_vs_fp32_shipped": 0.45, "weights_quantised_vs_fp32_large": 0.45}


@dataclass
class Settings:
    """One benchmark run: the same rollout and optimiser settings for every case."""

    group_size: int = 8          # G completions per prompt
    prompts_per_step: int = 8    # one optimiser step = prompts_per_step x group_size completions
    max_new_tokens: int = 48
    lr: float = 1e-4
    rounds: int = 12             # measured steps per case, after one warm-up step
    threads: int = 1             # torch CPU threads for every case (see README: 2 threads on a shared 2-core box)
    large: bool = True           # also measure memory at the LARGE size
    thread_check: bool = True    # also time a rollout with 1 vs 2 threads (up to ~2 min on a busy machine)


QUICK = Settings(group_size=4, prompts_per_step=2, max_new_tokens=16, rounds=2, large=False, thread_check=False)


# ---------------------------------------------------------------------------------------- timing
def our_trainer(algorithm: str, student_quant: str, teacher_quant: str, s: Settings, out: str) -> Trainer:
    cfg = load_config(
        algorithm, log_teacher_kl=False, student_quant=student_quant, teacher_quant=teacher_quant,
        group_size=s.group_size, prompts_per_step=s.prompts_per_step, max_new_tokens=s.max_new_tokens,
        lr=s.lr, temperature=1.0, ppo_epochs=1, lora_r=LORA.r, lora_alpha=LORA.alpha, seed=0,
        threads=s.threads, output_dir=out, student_path=str(STUDENT), teacher_path=str(TEACHER),
        data_dir=str(DATA))
    return Trainer(cfg)


def timed_kdrl_step(tr: Trainer) -> dict[str, float]:
    """``Trainer.train_step`` of KDRL (one PPO epoch) cut into timed pieces: same calls, same order."""
    cfg, w = tr.cfg, tr.world
    laps, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        laps[name], t = now - t, now

    rows = [w.train[i] for i in tr.sampler.next(cfg.prompts_per_step)]
    batch, rewards = tr.rollout(rows)
    lap("rollout")
    teacher_logp, teacher_logits = tr.teacher_scores(batch)
    lap("teacher_forward")
    w.student.train()
    loss, _, _ = tr.loss(batch, rewards, None, teacher_logp, teacher_logits, tr.beta_at(tr.step))
    lap("student_forward_and_loss")
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    lap("backward")
    torch.nn.utils.clip_grad_norm_(tr.params, cfg.max_grad_norm)
    lap("clip_grad_norm")
    tr.opt.step()
    lap("optimizer_step")
    tr.step += 1
    return laps


def trl_grpo_trainer(s: Settings, train_rows: list[dict], out: str, callback):
    """TRL's GRPOTrainer set up like ``our_trainer("grpo", "none", "none", s)``."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    # The prompts our PromptSampler hands out, in order: unshuffled, TRL takes the same ones each step.
    sampler = PromptSampler(len(train_rows), seed=0)
    order = [i for _ in range(s.rounds + 1) for i in sampler.next(s.prompts_per_step)]
    dataset = Dataset.from_list([{"prompt": train_rows[i]["prompt"], "answer": train_rows[i]["answer"]} for i in order])

    def correctness(completions, answer, **_):
        return [correctness_reward(c, a) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=out, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=0, max_steps=s.rounds + 1, shuffle_dataset=False,
        per_device_train_batch_size=s.prompts_per_step * s.group_size, gradient_accumulation_steps=1,
        num_generations=s.group_size, max_completion_length=s.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo",   # dapo = our token-mean over the batch
        scale_rewards="group",                                       # = our adv_scale="std"
        learning_rate=s.lr, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, gradient_checkpointing=False,                    # TRL defaults both to True; we use neither
    )
    lora = LoraConfig(r=LORA.r, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout,
                      target_modules=LORA.target_modules, task_type="CAUSAL_LM")
    tokenizer = models.load_tokenizer(STUDENT)
    model = models.load_causal_lm(STUDENT, "none", "cpu", role="student")
    trainer = GRPOTrainer(model=model, reward_funcs=correctness, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # logging_steps=1 keeps per-step lengths; don't print them
    return trainer


def make_interleaver(trainers: dict[str, Trainer]):
    """A TrainerCallback timing TRL's steps and running one step of each of our cases after each."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self):
            self.times = {"trl_grpo_fp32": [], **{name: [] for name in trainers}}
            self.metrics = {name: [] for name in trainers}
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            torch.manual_seed(SEED + state.global_step)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times["trl_grpo_fp32"].append(time.perf_counter() - self.t0)
            r = state.global_step - 1
            names = list(trainers)
            for name in names[r % len(names):] + names[:r % len(names)]:
                torch.manual_seed(SEED + r)
                t0 = time.perf_counter()
                if name == PIECES:
                    self.metrics[name].append(timed_kdrl_step(trainers[name]))
                else:
                    self.metrics[name].append(trainers[name].train_step())
                self.times[name].append(time.perf_counter() - t0)

    return Interleave()


def rollout_threads(tr: Trainer, s: Settings, reps: int = 1) -> dict:
    """Median rollout time with 1 vs 2 torch threads (same prompts, same seed).

    Run as two blocks, not interleaved: every switch of the thread count restarts the OpenMP
    pool, and with another job on the machine the first 2-thread calls after a switch are the
    slowest of all. Each block's first call is a warm-up and is reported separately.
    """
    rows = tr.world.train[:s.prompts_per_step]
    out = {}
    for n in (2, 1):
        torch.set_num_threads(n)
        times = []
        for _ in range(reps + 1):
            torch.manual_seed(SEED)
            t0 = time.perf_counter()
            tr.rollout(rows)
            times.append(time.perf_counter() - t0)
        out[f"rollout_{n}_threads_warmup_s"] = times[0]
        out[f"rollout_{n}_threads_s"] = statistics.median(times[1:])
    torch.set_num_threads(s.threads)
    out["ratio_2_vs_1"] = out["rollout_2_threads_s"] / out["rollout_1_threads_s"]
    return out


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[r] / b[r], warm-up round dropped."""
    return statistics.median(x / y for x, y in zip(a[1:], b[1:]))


def run_timing(s: Settings) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: our_trainer(*spec, s, f"{tmp}/{name}") for name, spec in OURS.items()}
        trainers[PIECES] = our_trainer("kdrl", "4bit", "8bit", s, f"{tmp}/{PIECES}")
        cb = make_interleaver(trainers)
        trl = trl_grpo_trainer(s, trainers["grpo_fp32"].world.train, f"{tmp}/trl", cb)
        trl.train()
        trl_lengths = [l["completions/mean_length"] for l in trl.state.log_history if "completions/mean_length" in l]
        threads = rollout_threads(trainers["grpo_fp32"], s) if s.thread_check else None
    t, m = cb.times, cb.metrics
    steps = {name: {"median": statistics.median(v[1:]), "steps": v[1:]} for name, v in t.items()}
    steps["trl_grpo_fp32"]["response_length"] = statistics.median(trl_lengths[1:])
    for name in OURS:
        steps[name]["response_length"] = statistics.median(x["response_length"] for x in m[name][1:])

    def per_token(name):
        return steps[name]["median"] / steps[name]["response_length"]

    ratios = {
        "ours_vs_trl": paired_ratio(t["grpo_fp32"], t["trl_grpo_fp32"]),
        "ours_vs_trl_per_token": per_token("grpo_fp32") / per_token("trl_grpo_fp32"),
        "kdrl_vs_grpo_quantised": paired_ratio(t["kdrl_quantised"], t["grpo_quantised"]),
        "kdrl_vs_grpo_fp32": paired_ratio(t["kdrl_fp32"], t["grpo_fp32"]),
        "quantised_vs_fp32_grpo": paired_ratio(t["grpo_quantised"], t["grpo_fp32"]),
        "quantised_vs_fp32_kdrl": paired_ratio(t["kdrl_quantised"], t["kdrl_fp32"]),
    }
    parts = ("rollout_time", "teacher_time", "train_time")
    from_metrics = {prec: {k: statistics.median(x[k] for x in m[f"kdrl_{prec}"][1:]) for k in parts + ("step_time",)}
                    for prec in ("quantised", "fp32")}
    pieces = {k: statistics.median(x[k] for x in m[PIECES][1:]) for k in m[PIECES][0]}
    pieces["total"] = sum(pieces.values())
    return {"step_time_s": steps, "ratios": ratios, **({"threads": threads} if threads else {}),
            "kdrl_breakdown_s": {"from_trainer_metrics": from_metrics, "pieces_quantised": pieces}}


# ---------------------------------------------------------------------------------------- memory
def rss_mb() -> dict[str, float]:
    """This process's resident memory (Linux /proc/self/status), MiB.

    peak = VmHWM, the high-water mark. Not ``ru_maxrss``: Linux carries the parent's peak across
    fork + exec into a child's ``ru_maxrss``, so a subprocess of this (large) benchmark process
    would report our peak. now = VmRSS, split into anon (heap: tensors we allocated) and file
    (mapped files, e.g. safetensors weights that were loaded zero-copy and have been touched).
    """
    fields = {"VmHWM:": "peak", "VmRSS:": "now", "RssAnon:": "anon", "RssFile:": "file"}
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(maxsplit=1)[0]
        if key in fields:
            out[fields[key]] = int(line.split()[1]) / 1024
    if len(out) != len(fields):
        raise RuntimeError("the memory study reads /proc/self/status: it needs Linux")
    return out


def weight_stats(model) -> dict:
    """Bytes the weights hold and how many weights of each kind there are.

    Bytes: parameters + buffers + the scales bitsandbytes keeps beside quantised weights (4-bit:
    one fp32 absmax per 64-weight block and the 16-entry NF4 code; 8-bit: one fp32 scale per
    row). Tensors shared between modules (tied embeddings, the NF4 code) count once.
    """
    held, kinds = {}, {"quantised_4bit": 0, "quantised_8bit": 0, "full_precision": 0, "lora": 0}
    for name, p in model.named_parameters():
        tensors = [p]
        if getattr(p, "quant_state", None) is not None:
            tensors += [p.quant_state.absmax, p.quant_state.code]
            kinds["quantised_4bit"] += math.prod(p.quant_state.shape)
        elif p.dtype == torch.int8:
            tensors.append(p.SCB)
            kinds["quantised_8bit"] += p.numel()
        else:
            kinds["lora" if "lora_" in name else "full_precision"] += p.numel()
        for x in tensors:
            held[x.data_ptr()] = x.numel() * x.element_size()
    for b in model.buffers():
        held[b.data_ptr()] = b.numel() * b.element_size()
    return {"bytes": sum(held.values()), "weights": kinds}


def memory_case(student: str, teacher: str, quantised: bool, threads: int) -> dict:
    """Load student + teacher, run one KDRL forward/backward on 8 sequences; weights and peak RSS."""
    torch.set_num_threads(threads)
    utils.quiet()
    # Import what loading will import, so the baseline is the runtime and the rest is the models.
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    baseline = rss_mb()["peak"]
    s_model = models.load_student(student, "4bit" if quantised else "none", LORA)
    t_model = models.load_teacher(teacher, "8bit" if quantised else "none")
    after_load = rss_mb()["peak"]
    # counted at rest: the first forward moves the 8-bit row scales from the weight to the layer state
    weights = {"student": weight_stats(s_model), "teacher": weight_stats(t_model)}
    tok = models.load_tokenizer(STUDENT)
    rows = [json.loads(line) for line in open(DATA / "train.jsonl")][:8]
    batch = teacher_forced_batch(tok, [r["prompt"] for r in rows], [r["solution"] for r in rows], "cpu")
    with torch.no_grad():
        teacher_logp = token_logprobs(t_model, batch)
    s_model.train()
    logp = token_logprobs(s_model, batch)
    loss, _ = losses.kdrl_loss(logp, logp.detach(), teacher_logp, torch.zeros(len(rows)),
                               batch.completion_mask, group_size=len(rows), beta=0.02)
    loss.backward()
    end = rss_mb()
    return {**weights, "rss_baseline_mb": baseline, "rss_after_load_mb": after_load, "rss_peak_mb": end["peak"],
            "rss_end_mb": end["now"], "rss_end_anon_mb": end["anon"], "rss_end_file_mb": end["file"]}


def build_large(out: Path) -> dict[str, str]:
    """Random-weight Llama student and teacher at the LARGE size (vocab 32000, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    paths = {}
    for role, shape in LARGE.items():
        cfg = LlamaConfig(**shape, intermediate_size=shape["hidden_size"] * 11 // 4, num_attention_heads=16,
                          num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=True,
                          max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(out / role)
        paths[role] = str(out / role)
    return paths


def run_memory_subprocess(student: str, teacher: str, quantised: bool, threads: int) -> dict:
    spec = json.dumps({"student": student, "teacher": teacher, "quantised": quantised, "threads": threads})
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_cost", "--memory-case", spec], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory case {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_memory(s: Settings) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"shipped": {"student": str(STUDENT), "teacher": str(TEACHER)}}
        if s.large:
            sizes["large"] = build_large(Path(tmp))
        memory, ratios = {}, {}
        for size, paths in sizes.items():
            memory[size] = {prec: run_memory_subprocess(paths["student"], paths["teacher"], prec == "quantised",
                                                        s.threads)
                            for prec in ("fp32", "quantised")}
            total = {prec: c["student"]["bytes"] + c["teacher"]["bytes"] for prec, c in memory[size].items()}
            ratios[f"weights_quantised_vs_fp32_{size}"] = total["quantised"] / total["fp32"]
            for key in ("rss_peak_mb", "rss_end_mb"):
                c = memory[size]
                ratios[f"{key[:-3]}_quantised_vs_fp32_{size}"] = c["quantised"][key] / c["fp32"][key]
    return memory, ratios


# ---------------------------------------------------------------------------------------- report
def table(results: dict) -> str:
    r, steps = results["ratios"], results["step_time_s"]
    lines = [f"{'case':28s} {'median step (s)':>16s} {'completion len':>15s}"]
    for name, v in steps.items():
        lines.append(f"{name:28s} {v['median']:16.3f} {v.get('response_length', float('nan')):15.1f}")
    lines += ["", f"{'ratio':36s} {'value':>7s} {'target':>8s}  met"]
    for name, value in r.items():
        target = TARGETS.get(name)
        verdict = "-" if target is None else ("yes" if value <= target else "NO")
        lines.append(f"{name:36s} {value:7.3f} {'<= ' + str(target) if target else '':>8s}  {verdict}")
    b = results["kdrl_breakdown_s"]["pieces_quantised"]
    lines += ["", "one KDRL step, shipped defaults (4-bit student, 8-bit teacher), median s:"]
    lines += [f"  {k:26s} {v:7.3f}  {v / b['total']:6.1%}" for k, v in b.items() if k != "total"]
    lines.append(f"  {'total':26s} {b['total']:7.3f}")
    for size, cases in results["memory"].items():
        for prec, c in cases.items():
            wb = (c["student"]["bytes"] + c["teacher"]["bytes"]) / 2**20
            lines.append(f"memory {size:8s} {prec:9s} weights {wb:8.2f} MiB  peak RSS {c['rss_peak_mb']:7.0f} MiB  "
                         f"RSS at end {c['rss_end_mb']:7.0f} MiB (anon {c['rss_end_anon_mb']:.0f})  "
                         f"baseline {c['rss_baseline_mb']:.0f}")
    return "\n".join(lines)


def world_fingerprint() -> dict:
    """sha256 of the measured weights: the tiny world is rebuilt from time to time."""
    import hashlib

    return {role: hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
            for role, path in (("student", STUDENT), ("teacher", TEACHER))}


def machine(s: Settings) -> dict:
    import bitsandbytes
    import peft
    import transformers
    import trl

    return {"cpus": os.cpu_count(), "torch_threads": s.threads, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny batches, 2 rounds, shipped sizes only")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {RESULTS.relative_to(ROOT)}; "
                                                          f"--quick writes nothing unless given)")
    p.add_argument("--rounds", type=int, default=None, help="measured steps per case")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: one fresh-process memory case
    a = p.parse_args(argv)
    utils.offline()
    if a.memory_case:
        spec = json.loads(a.memory_case)
        print(json.dumps(memory_case(spec["student"], spec["teacher"], spec["quantised"], spec["threads"])))
        return {}
    utils.quiet()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*is deprecated", category=FutureWarning)
    s = QUICK if a.quick else Settings()
    s = Settings(**{**asdict(s), **{k: v for k, v in (("rounds", a.rounds), ("threads", a.threads)) if v}})
    torch.set_num_threads(s.threads)
    start, load_start = time.time(), os.getloadavg()
    results = run_timing(s)
    timing_done = time.time()
    gc.collect()
    results["memory"], memory_ratios = run_memory(s)
    results["ratios"].update(memory_ratios)
    wall = {"timing": timing_done - start, "memory": time.time() - timing_done, "total": time.time() - start}
    results = {
        "command": "python -m benchmarks.step_cost" + (" --quick" if a.quick else ""),
        "machine": {**machine(s), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "world_sha256": world_fingerprint(),
        "settings": {**asdict(s), "lora": asdict(LORA), "temperature": 1.0, "ppo_epochs": 1, "seed": SEED,
                     "cases": OURS, "trl": "GRPOTrainer, fp32 student + LoRA, beta=0, loss_type=dapo, "
                                          "scale_rewards=group, bf16=False, gradient_checkpointing=False"},
        "targets": TARGETS,
        **results,
        "wall_time_s": wall,
    }
    print(table(results))
    out = a.out or (None if a.quick else RESULTS)
    if out:
        Path(out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
