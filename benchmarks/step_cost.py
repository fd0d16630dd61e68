"""What a training step costs: kdrl_mini vs TRL's GRPOTrainer, KDRL vs GRPO, and weight memory.

    python -m benchmarks.step_cost            # full run, writes benchmarks/results.json
    python -m benchmarks.step_cost --quick    # CI smoke (< 60 s): tiny batches, shipped sizes only
    python -m benchmarks.step_cost --scaling  # also: 3 student sizes x 2 completion lengths

Every kdrl_mini case is stepped with the trainer's own ``Trainer.train_step`` (no copy of the
step); its rows carry the timing laps (rollout, teacher, train) the breakdown reads.

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
from kdrl_mini.advantages import group_advantages
from kdrl_mini.config import load_config
from kdrl_mini.real.measure import memory_mb
from kdrl_mini.rewards import correctness_reward
from kdrl_mini.rollout import sample, teacher_forced_batch
from kdrl_mini.scoring import cache_kwarg, kv_cache, score_groups, token_logprobs
from kdrl_mini.runs.loading import PromptSampler
from kdrl_mini.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STUDENT, TEACHER, DATA = ROOT / "data/models/student", ROOT / "data/models/teacher", ROOT / "data"
RESULTS = Path(__file__).with_name("results.json")
SEED = 1000
LORA = models.LoraSpec(r=16, alpha=32)  # all-linear, no dropout: the shipped configs' adapter
# name: (algorithm, student_quant, teacher_quant); GRPO never runs the teacher (log_exact_kl=False)
OURS = {
    "grpo_fp32": ("grpo", "none", "none"),
    "kdrl_fp32": ("kdrl", "none", "none"),
    "grpo_quantised": ("grpo", "4bit", "8bit"),
    "kdrl_quantised": ("kdrl", "4bit", "8bit"),
}
# The larger size for the memory study (random weights): hidden sizes are multiples of 64 because
# bitsandbytes' 4-bit CPU path needs them (see models._refuse_misaligned_4bit).
LARGE = {"student": dict(hidden_size=1024, num_hidden_layers=8),
         "teacher": dict(hidden_size=1024, num_hidden_layers=16)}
TARGETS = {"ours_vs_trl": 0.6, "kdrl_vs_grpo_quantised": 1.35, "kdrl_vs_grpo_fp32": 1.25,
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
    scaling: bool = False        # also the 3 sizes x 2 lengths table (fp32 cases only)


QUICK = Settings(group_size=4, prompts_per_step=2, max_new_tokens=16, rounds=2, large=False)
# Student shapes of the scaling table (random weights, the world's tokenizer); teacher = 2x the layers.
SIZES = {"shipped": None, "2.6M": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4),
         "9.1M": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4)}
LENGTHS = (48, 192)


# ---------------------------------------------------------------------------------------- timing
def our_trainer(algorithm: str, student_quant: str, teacher_quant: str, s: Settings, out: str,
                student=STUDENT, teacher=TEACHER) -> Trainer:
    cfg = load_config(
        algorithm, log_exact_kl=False, student_quant=student_quant, teacher_quant=teacher_quant,
        group_size=s.group_size, prompts_per_step=s.prompts_per_step, max_new_tokens=s.max_new_tokens,
        lr=s.lr, temperature=1.0, ppo_epochs=1, lora_r=LORA.r, lora_alpha=LORA.alpha, seed=0,
        threads=s.threads, output_dir=out, student_path=str(student), teacher_path=str(teacher),
        data_dir=str(DATA))
    return Trainer(cfg)


def floors(tr: Trainer, s: Settings, reps: int = 5) -> dict[str, float]:
    """What each part of a KDRL step would cost with no kit around it, on the same batch:
    a bare KV-cache sampling loop on a plain fp32 copy of the student, one plain teacher forward,
    one student forward + backward of a plain log-likelihood. Medians of ``reps`` calls."""
    rows = tr.world.train[: s.prompts_per_step]
    prompts = [r["prompt"] for r in rows]
    with tr.sampling_policy() as policy:
        batch = sample(policy, tr.world.tokenizer, prompts, s.group_size, s.max_new_tokens)
    copy = tr.rollout_policy.copy
    plain = copy.refresh() if copy is not None else policy

    def decode():
        bare_decode(plain, batch.input_ids[:, : batch.prompt_len], batch.attention_mask[:, : batch.prompt_len],
                    batch.completion_ids.shape[1])

    def teacher():
        with torch.no_grad():
            token_logprobs(tr.world.teacher, batch)

    def student():
        tr.world.student.train()
        (-(token_logprobs(tr.world.student, batch) * batch.completion_mask).sum()).backward()
        tr.opt.zero_grad(set_to_none=True)

    def teacher_groups():
        score_groups(tr.world.teacher, batch, s.group_size)

    out = {}
    for name, fn in (("bare_decode", decode), ("teacher_forward", teacher), ("teacher_forward_shared_prompts",
                     teacher_groups), ("student_forward_backward", student)):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


@torch.no_grad()
def bare_decode(model, ids, attn, n_new: int):
    """The floor of sampling: a loop of one-token forwards on the KV cache, multinomial draws."""
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, last = kv_cache(out), pos[:, -1:]
    for _ in range(n_new):
        tok = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1)
        attn = torch.cat([attn, torch.ones_like(tok)], dim=1)
        last = last + 1
        out = model(input_ids=tok, attention_mask=attn, position_ids=last, use_cache=True, **cache_kwarg(model, cache))


def trl_grpo_trainer(s: Settings, train_rows: list[dict], out: str, callback, student=STUDENT):
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
    model = models.load_causal_lm(student, "none", "cpu", role="student")
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
                self.metrics[name].append(trainers[name].train_step())
                self.times[name].append(time.perf_counter() - t0)

    return Interleave()


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[r] / b[r], warm-up round dropped."""
    return statistics.median(x / y for x, y in zip(a[1:], b[1:]))


def run_timing(s: Settings, cases: dict = OURS, student=STUDENT, teacher=TEACHER, with_floors: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: our_trainer(*spec, s, f"{tmp}/{name}", student, teacher) for name, spec in cases.items()}
        cb = make_interleaver(trainers)
        trl = trl_grpo_trainer(s, trainers["grpo_fp32"].world.train, f"{tmp}/trl", cb, student)
        trl.train()
        trl_lengths = [l["completions/mean_length"] for l in trl.state.log_history if "completions/mean_length" in l]
        kdrl = "kdrl_quantised" if "kdrl_quantised" in trainers else "kdrl_fp32"
        floor = floors(trainers[kdrl], s) if with_floors else None
    t, m = cb.times, cb.metrics
    steps = {name: {"median": statistics.median(v[1:]), "steps": v[1:]} for name, v in t.items()}
    steps["trl_grpo_fp32"]["response_length"] = statistics.median(trl_lengths[1:])
    for name in cases:
        steps[name]["response_length"] = statistics.median(x["response_length"] for x in m[name][1:])
        steps[name]["tok_s"] = statistics.median(x["response_length"] * s.group_size * s.prompts_per_step
                                                 / x["step_time"] for x in m[name][1:])

    def per_token(name):
        return steps[name]["median"] / steps[name]["response_length"]

    ratios = {"ours_vs_trl": paired_ratio(t["grpo_fp32"], t["trl_grpo_fp32"]),
              "ours_vs_trl_per_token": per_token("grpo_fp32") / per_token("trl_grpo_fp32"),
              "kdrl_vs_grpo_fp32": paired_ratio(t["kdrl_fp32"], t["grpo_fp32"])}
    if "kdrl_quantised" in cases:
        ratios.update(kdrl_vs_grpo_quantised=paired_ratio(t["kdrl_quantised"], t["grpo_quantised"]),
                      quantised_vs_fp32_grpo=paired_ratio(t["grpo_quantised"], t["grpo_fp32"]),
                      quantised_vs_fp32_kdrl=paired_ratio(t["kdrl_quantised"], t["kdrl_fp32"]))
    parts = ("rollout_time", "teacher_time", "train_time", "step_time")
    laps = {name: {k: statistics.median(x[k] for x in m[name][1:]) for k in parts} for name in cases}
    out = {"step_time_s": steps, "ratios": ratios, "laps_s": laps}
    if floor:
        lap = laps[kdrl]
        out["kdrl_breakdown_s"] = {"case": kdrl, "laps": lap, "floors": floor,
                                   "overhead": {"rollout_vs_bare_decode": lap["rollout_time"] / floor["bare_decode"],
                                                "teacher_vs_plain_forward": lap["teacher_time"] / floor["teacher_forward"],
                                                "train_vs_plain_forward_backward":
                                                    lap["train_time"] / floor["student_forward_backward"]}}
    return out


def run_scaling(s: Settings) -> list[dict]:
    """Ratios and tokens/s at three student sizes x two completion lengths (fp32 cases only)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rows = []
    fp32 = {k: v for k, v in OURS.items() if k.endswith("fp32")}
    with tempfile.TemporaryDirectory() as tmp:
        for size, shape in SIZES.items():
            student, teacher = STUDENT, TEACHER
            if shape:
                base = AutoConfig.from_pretrained(STUDENT).to_dict()
                paths = {}
                for role, layers in (("student", shape["num_hidden_layers"]), ("teacher", 2 * shape["num_hidden_layers"])):
                    cfg = type(AutoConfig.from_pretrained(STUDENT)).from_dict({**base, **shape, "num_hidden_layers": layers})
                    torch.manual_seed(0)
                    model = AutoModelForCausalLM.from_config(cfg)
                    model.save_pretrained(f"{tmp}/{size}-{role}")
                    models.load_tokenizer(STUDENT).save_pretrained(f"{tmp}/{size}-{role}")
                    paths[role] = f"{tmp}/{size}-{role}"
                student, teacher = paths["student"], paths["teacher"]
            params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(student).parameters())
            for length in LENGTHS:
                r = run_timing(Settings(**{**asdict(s), "max_new_tokens": length, "rounds": 3}), fp32, student,
                               teacher, with_floors=False)
                rows.append({"size": size, "student_params": params, "max_new_tokens": length,
                             "ours_vs_trl": r["ratios"]["ours_vs_trl"], "kdrl_vs_grpo_fp32": r["ratios"]["kdrl_vs_grpo_fp32"],
                             "grpo_tok_s": r["step_time_s"]["grpo_fp32"]["tok_s"],
                             "kdrl_tok_s": r["step_time_s"]["kdrl_fp32"]["tok_s"],
                             "trl_s": r["step_time_s"]["trl_grpo_fp32"]["median"],
                             "response_length": r["step_time_s"]["grpo_fp32"]["response_length"]})
                print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------------------- memory
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
    baseline = memory_mb()["peak"]
    s_model = models.load_student(student, "4bit" if quantised else "none", LORA)
    t_model = models.load_teacher(teacher, "8bit" if quantised else "none")
    after_load = memory_mb()["peak"]
    # counted at rest: the first forward moves the 8-bit row scales from the weight to the layer state
    weights = {"student": weight_stats(s_model), "teacher": weight_stats(t_model)}
    tok = models.load_tokenizer(STUDENT)
    rows = [json.loads(line) for line in open(DATA / "train.jsonl")][:8]
    batch = teacher_forced_batch(tok, [r["prompt"] for r in rows], [r["solution"] for r in rows], "cpu")
    with torch.no_grad():
        teacher_logp = token_logprobs(t_model, batch)
    s_model.train()
    logp = token_logprobs(s_model, batch)
    adv = group_advantages(torch.zeros(len(rows)), len(rows))
    loss, _ = losses.kdrl_loss(logp, logp.detach(), adv, batch.completion_mask, teacher_logp=teacher_logp, beta=0.02)
    loss.backward()
    end = memory_mb()
    return {**weights, "rss_baseline_mb": baseline, "rss_after_load_mb": after_load, "rss_peak_mb": end["peak"],
            "rss_end_mb": end["rss"], "rss_end_anon_mb": end["anon"], "rss_end_file_mb": end["file"]}


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
    b = results["kdrl_breakdown_s"]
    lines += ["", f"one KDRL step ({b['case']}), median s, against the floor of each part:"]
    lines += [f"  {k:32s} {v:7.3f}" for k, v in {**b["laps"], **b["floors"]}.items()]
    lines += [f"  {k:32s} {v:7.2f}x" for k, v in b["overhead"].items()]
    for row in results.get("scaling", []):
        lines.append(f"scaling {row['size']:8s} ({row['student_params']:>10,} params) T={row['max_new_tokens']:3d}: "
                     f"ours/TRL {row['ours_vs_trl']:.2f}  KDRL/GRPO {row['kdrl_vs_grpo_fp32']:.2f}  "
                     f"GRPO {row['grpo_tok_s']:.0f} tok/s  KDRL {row['kdrl_tok_s']:.0f} tok/s")
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
    p.add_argument("--scaling", action="store_true", help="also the sizes x lengths table (adds ~15 min)")
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
    s = Settings(**{**asdict(s), **{k: v for k, v in (("rounds", a.rounds), ("threads", a.threads),
                                                       ("scaling", a.scaling)) if v}})
    torch.set_num_threads(s.threads)
    start, load_start = time.time(), os.getloadavg()
    results = run_timing(s)
    timing_done = time.time()
    gc.collect()
    results["memory"], memory_ratios = run_memory(s)
    results["ratios"].update(memory_ratios)
    if s.scaling:
        results["scaling"] = run_scaling(s)
    wall = {"timing": timing_done - start, "memory": time.time() - timing_done, "total": time.time() - start}
    results = {
        "command": "python -m benchmarks.step_cost" + (" --quick" if a.quick else "") + (" --scaling" if s.scaling else ""),
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
