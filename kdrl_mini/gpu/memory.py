"""How much GPU memory (and time) one training run should need, before any weight is loaded.

An **estimate**, computed offline from a model's ``config.json`` numbers and a
:class:`~kdrl_mini.config.TrainConfig`; labelled "estimate" until measured on a card (``kdrl-mini smoke``).

Memory parts (bytes), in three groups:

- **always held**: CUDA context, the weights of student and teacher, LoRA weights with their
  gradients and AdamW states, the rollout's small [B, L] tensors, and the teacher's full logits
  when an exact or top-k KL keeps them;
- **one phase at a time** (the peak is the largest phase, since the phases run one after another):
  ``generate`` (sampling every rollout, by the student or KD-FKL's teacher: KV cache, prefill, logits),
  ``teacher`` (scoring one micro-batch with the frozen teacher), ``train`` (the student's
  forward/backward on one micro-batch: saved activations and the head's chunks of logits), ``eval``
  (greedy decoding of up to 100 test rows at once).

``total = sum(always) + max(phase sums)``.

What is exact and what is approximate:

- weight counts follow the architecture exactly (they reproduce the published parameter counts);
  bytes per weight are bitsandbytes' formats: NF4 0.5 B + one fp32 absmax per 64 weights (no double
  quantisation, as the kit loads it), LLM.int8 1 B + one fp32 scale per output row; embeddings,
  the LM head, norms and biases stay in the compute dtype (2 B): ``models.prepare_kbit_student`` keeps
  them there (peft's preparation cast them to fp32: +0.43 GiB for a tied 1.5B, +0.87 GiB untied).
- **measured on CPU** (the factors of issue 23): a block's saved tensors, 174,008 B per token at
  Qwen2.5-1.5B's shape in bf16 with LoRA on every linear, 1.54x the count of
  :meth:`~kdrl_mini.gpu.shapes.ModelShape.saved_elements_per_token_layer` (LoRA inputs, fp32 norm
  internals), applied as :data:`SAVED_FACTOR`; the head run a chunk of tokens at a time
  (:func:`kdrl_mini.scoring.head_token_stats`): about 5 chunk budgets during the student's
  forward/backward and 2 for the teacher, whatever T and V (``tests/test_scoring.py``); full logits
  where the loss sums over the vocabulary (exact / top-k KL) at 10 B per element (compute-dtype
  logits, their fp32 copy, the fp32 gradient).
- **approximate**: the per-token activation count itself (SDPA memory-efficient attention, grouped KV
  heads expanded; a math-backend fallback would add [B, heads, L, L] scores), the prompt length (a
  padded batch is as long as its longest prompt), the CUDA context (0.4 GiB) and library workspaces
  (0.25 GiB), and allocator fragmentation (not modelled: :func:`fits` keeps 5% of the free memory spare).
- step time is rougher still: FLOPs (2 per parameter per token forward, 4 more backward, 2 more to
  recompute under gradient checkpointing) over an assumed fraction of the card's peak, and decoding
  limited by reading the weights once per generated token plus a fixed launch overhead per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..kl import FULL_VOCAB_KINDS
from ..scoring import CHUNK_ELEMENTS
from .shapes import ModelShape
from .timing import eval_seconds, phase_seconds, step_seconds, teacher_samples

GiB = 2**30
CUDA_CONTEXT = int(0.4 * GiB)       # created by the first CUDA call (so mem_get_info has already paid it)
WORKSPACES = int(0.25 * GiB)         # cuBLAS / bitsandbytes kernels and workspaces, loaded lazily
NF4_BLOCK = 64                       # bitsandbytes NF4 block size: one fp32 absmax per block
CHUNK_BYTES = CHUNK_ELEMENTS * 4     # one chunk of fp32 logits through the head
SAVED_FACTOR = 174_008 / 112_640     # measured / counted bytes a Qwen2.5-1.5B block saves per token (bf16, LoRA)
# On CUDA the factor is expected between 1.0 and the CPU's 1.54: on CPU peft up-casts every LoRA input to fp32
# and saves it; under CUDA autocast the LoRA matmul saves a 16-bit copy instead. The estimate (and the fit
# check) uses the upper end; ``MemoryEstimate.low`` the lower; a measured peak below FAR_TOO_HIGH x low
# says the estimate is far too high (80gb-paper: about 38 GiB at 1.0 against 52.9 at 1.54).
SAVED_FACTOR_RANGE = (1.0, SAVED_FACTOR)
FAR_TOO_HIGH = 0.7
HEAD_CHUNKS_TRAIN = 5                # chunk budgets alive in the student's chunked head (measured on CPU)
HEAD_CHUNKS_TEACHER = 2              # and in the teacher's (no entropy, no backward)
HEAD_CHUNKS_TRAIN_KL = 10            # with the exact / top-k KL: the teacher's chunk logits rebuilt beside the student's (9.2 measured)
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "auto": 2, "fp32": 4}
PHASES = ("generate", "teacher", "train", "eval")


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    group: str        # "always" or one of PHASES
    note: str = ""
    low: int | None = None  # the lower end of a part known only within a range (activations); None: exact


@dataclass
class MemoryEstimate:
    """Per-part bytes; ``total = sum(always) + max over phases``. An estimate, not a measurement."""

    parts: list[Part]
    step_seconds: float = float("nan")
    detail: dict = field(default_factory=dict)

    def group_bytes(self, group: str) -> int:
        return sum(p.bytes for p in self.parts if p.group == group)

    @property
    def always(self) -> int:
        return self.group_bytes("always")

    @property
    def phases(self) -> dict[str, int]:
        return {g: self.group_bytes(g) for g in PHASES}

    @property
    def peak_phase(self) -> str:
        phases = self.phases
        return max(phases, key=phases.get)

    @property
    def total(self) -> int:
        return self.always + max(self.phases.values())

    def low_group(self, group: str) -> int:
        return sum(p.bytes if p.low is None else p.low for p in self.parts if p.group == group)

    @property
    def low(self) -> int:
        """The total with every ranged part at its lower end (the activation factor on CUDA, 1.0)."""
        return self.low_group("always") + max(self.low_group(g) for g in PHASES)

    def part(self, name: str) -> int:
        return sum(p.bytes for p in self.parts if p.name == name)


def _weights_bytes(shape: ModelShape, quant: str, dtype_bytes: int) -> int:
    """Bytes of one model's weights under ``quant`` ("4bit", "8bit" or "none")."""
    linear = shape.layers * shape.linear_params_per_layer
    small = shape.layers * shape.small_params_per_layer + shape.embedding_params + shape.hidden
    if quant == "4bit":
        linear_b = linear * 0.5 + math.ceil(linear / NF4_BLOCK) * 4
    elif quant == "8bit":
        linear_b = linear * 1 + shape.layers * shape.linear_rows_per_layer * 4
    else:
        linear_b = linear * dtype_bytes
    return int(linear_b + small * dtype_bytes)


def lora_parameters(shape: ModelShape, r: int) -> int:
    """LoRA on every linear of every block ("all-linear"): r * (in + out) per linear."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return shape.layers * r * per_layer


def _train_activations(shape: ModelShape, rows: int, length: int, checkpointing: bool, dtype_bytes: int,
                       factor: float = SAVED_FACTOR) -> int:
    tokens = rows * length
    full_layer = math.ceil(tokens * shape.saved_elements_per_token_layer() * dtype_bytes * factor)
    if checkpointing:  # each block keeps its input; one block's activations are rebuilt at a time
        kept = shape.layers * tokens * shape.hidden * dtype_bytes + full_layer
    else:
        kept = shape.layers * full_layer
    final_norm = tokens * 4 * shape.hidden * dtype_bytes  # final RMSNorm (+fp32 copy) and the head's input
    mask = rows * length * length * dtype_bytes            # the 4-D attention mask SDPA receives
    return kept + final_norm + mask


def _layer_temporaries(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """One block's forward temporaries over ``rows`` x ``tokens`` (prefill, teacher scoring)."""
    return rows * tokens * (4 * shape.hidden + 3 * shape.intermediate) * dtype_bytes


def _generate_parts(cfg, s: ModelShape, t: ModelShape, db: int, P: int, vllm_bytes: int | None) -> list[Part]:
    """The rollout's memory: vLLM's share of the card, or HF ``generate`` of every rollout at once (KV cache,
    one block's prefill temporaries, last-token logits) by the model that samples: the student, or the
    teacher for KD-FKL (kd-then-grpo: whichever of its stages needs more)."""
    L = P + cfg.max_new_tokens

    def sampling(shape, rows, who):
        return [Part(f"KV cache ({who} sampling)", rows * L * shape.kv_bytes_per_token(db), "generate",
                     f"{rows} x {L} tokens"),
                Part(f"prefill + sampling ({who})", _layer_temporaries(shape, rows, P, db) + 3 * rows * shape.vocab * 4,
                     "generate", "one block's temporaries over the prompts; last-token logits")]

    student = ([Part("vLLM (colocated)", vllm_bytes, "generate", "its weights copy and KV cache, asleep outside "
                     "generation")] if vllm_bytes is not None else
               sampling(s, cfg.group_size * cfg.prompts_per_step, "student"))
    samplers = {teacher_samples(cfg, cfg.algorithm_at(k)) for k in (0, cfg.max_steps - 1)}  # kd-then-grpo: two
    if True not in samplers:
        return student
    prompts, G = cfg.sampling_at(0)
    teacher = sampling(t, prompts * G, "teacher")
    return teacher if False not in samplers or sum(p.bytes for p in teacher) >= sum(p.bytes for p in student) else student


def estimate(cfg, student: dict | ModelShape, teacher: dict | ModelShape, prompt_tokens: int = 256,
             tflops: float | None = None, bandwidth_gbs: float | None = None, vllm_bytes: int | None = None
             ) -> MemoryEstimate:
    """Peak GPU memory of one run of ``cfg`` (a TrainConfig) with these model shapes.

    ``student``/``teacher``: ``config.json`` dicts or :class:`ModelShape`; ``prompt_tokens``: the
    padded prompt length (chat template + question + instruction). ``tflops`` (dense 16-bit
    tensor peak) and ``bandwidth_gbs`` of the card give a step-time estimate (NaN without them).
    ``vllm_bytes``: the run is on TRL with vLLM colocated (``--engine trl``), which takes that much while
    it generates (freed while asleep) in place of HF ``generate``'s KV cache. TRL's student forward scores
    through its fused LM head in tiles (k1/k2/k3) or through the kit's token-chunked head (exact / top-k),
    so the other parts are the kit's.
    """
    s = student if isinstance(student, ModelShape) else ModelShape.from_config(student)
    t = teacher if isinstance(teacher, ModelShape) else ModelShape.from_config(teacher)
    db = DTYPE_BYTES[cfg.compute_dtype]
    P, T, G, N = prompt_tokens, cfg.max_new_tokens, cfg.group_size, cfg.prompts_per_step
    B, L = G * N, prompt_tokens + cfg.max_new_tokens
    mb = min(cfg.micro_batch_size or B, B)
    teacher_rows = min(B, mb if mb < G else (mb // G) * G)  # scoring.score_groups: whole groups, or pieces of one
    full_vocab = cfg.kl_kind in FULL_VOCAB_KINDS
    eval_rows = min(cfg.eval_size, cfg.eval_batch_size)
    lora = lora_parameters(s, cfg.lora_r) if cfg.lora_r > 0 else s.parameters
    keep_teacher_hidden = cfg.kl_kind in FULL_VOCAB_KINDS or bool(cfg.log_exact_kl)

    parts = [
        Part("cuda context", CUDA_CONTEXT, "always", "driver + runtime, taken at the first CUDA call"),
        Part("workspaces", WORKSPACES, "always", "cuBLAS and bitsandbytes kernels"),
        Part("student weights", _weights_bytes(s, cfg.student_quant, db), "always", cfg.student_quant),
        Part("teacher weights", _weights_bytes(t, cfg.teacher_quant, db), "always", cfg.teacher_quant),
        Part("trainable + AdamW", lora * 16, "always", "fp32 weight, gradient, two moments"),
        Part("rollout tensors", B * L * 8 * 4, "always", "ids, masks, log-probs [B, L]"),
        Part("teacher hidden kept", B * T * t.hidden * db if keep_teacher_hidden else 0, "always",
             "exact/top-k KL: [B, T, H], its logits rebuilt a chunk of tokens at a time"),
        *_generate_parts(cfg, s, t, db, P, vllm_bytes),
        # teacher: one micro-batch (whole groups), no gradients
        Part("teacher KV + temporaries", teacher_rows * L * t.kv_bytes_per_token(db) + _layer_temporaries(t, teacher_rows, L, db),
             "teacher", f"{teacher_rows} rows"),
        Part("teacher logits", HEAD_CHUNKS_TEACHER * CHUNK_BYTES, "teacher", "chunks of tokens through the head"),
        # train: the student's forward/backward on one micro-batch
        Part("activations", _train_activations(s, mb, L, cfg.gradient_checkpointing, db), "train",
             f"{mb} x {L} tokens, checkpointing {'on' if cfg.gradient_checkpointing else 'off'}; "
             f"x{SAVED_FACTOR_RANGE[0]:.2f}-{SAVED_FACTOR_RANGE[1]:.2f} measured factor",
             low=_train_activations(s, mb, L, cfg.gradient_checkpointing, db, SAVED_FACTOR_RANGE[0])),
        Part("student logits", (HEAD_CHUNKS_TRAIN_KL if full_vocab else HEAD_CHUNKS_TRAIN) * CHUNK_BYTES, "train",
             "chunks of tokens through the head" + (", the teacher's beside them" if full_vocab else "")),
        # eval: greedy decoding
        Part("KV cache (eval)", eval_rows * (L + cfg.eval_extra_tokens) * s.kv_bytes_per_token(db)
             + _layer_temporaries(s, eval_rows, P, db) + 3 * eval_rows * s.vocab * 4, "eval", f"{eval_rows} rows"),
    ]
    est = MemoryEstimate(parts, detail={"student_params": s.parameters, "teacher_params": t.parameters,
                                        "trainable_params": lora, "rollouts": B, "micro_batch": mb,
                                        "sequence_length": L})
    if tflops and bandwidth_gbs:
        timing = (cfg, s, t, P, tflops, bandwidth_gbs, vllm_bytes is not None)
        est.step_seconds, est.detail["phase_seconds"] = step_seconds(*timing), phase_seconds(*timing)
        est.detail["eval_seconds"] = eval_seconds(cfg, s, P, bandwidth_gbs)
    return est


# ---------------------------------------------------------------- checks and display
def fits(est: MemoryEstimate, free_bytes: int, context_taken: bool = True, spare: float = 0.05) -> bool:
    """Whether the estimate fits in ``free_bytes`` (``torch.cuda.mem_get_info()[0]``), keeping
    ``spare`` of it for fragmentation. ``context_taken``: the CUDA context already exists (it does
    once mem_get_info has run), so it is not counted again."""
    return needed_bytes(est, context_taken) <= (1 - spare) * free_bytes


def needed_bytes(est: MemoryEstimate, context_taken: bool = True) -> int:
    return est.total - (est.part("cuda context") if context_taken else 0)


def knob(est: MemoryEstimate, cfg) -> str:
    """The setting to change first when the estimate does not fit (the largest term decides)."""
    weights = est.part("student weights") + est.part("teacher weights")
    phase = est.peak_phase
    if weights > est.phases[phase]:
        return "a smaller teacher (teacher_path) or teacher_quant=4bit"
    if phase == "train":
        if not cfg.gradient_checkpointing and est.part("activations") > est.part("student logits"):
            return "--set gradient_checkpointing=true"
        if (cfg.micro_batch_size or 2) > 1:
            return f"--set micro_batch_size={max(1, (cfg.micro_batch_size or cfg.group_size) // 2)}"
        return f"--set max_new_tokens={cfg.max_new_tokens // 2}"
    if phase == "teacher":
        mb = cfg.micro_batch_size or cfg.group_size * cfg.prompts_per_step
        return (f"--set micro_batch_size={max(1, mb // 2)}" if mb > 1 else
                f"--set max_new_tokens={cfg.max_new_tokens // 2} or a smaller teacher")
    if phase == "eval":
        return f"--set eval_size={max(1, min(cfg.eval_size, cfg.eval_batch_size) // 2)} or lower max_new_tokens"
    return f"--set max_new_tokens={cfg.max_new_tokens // 2} (or fewer prompts_per_step)"


def refusal(name: str, est: MemoryEstimate, cfg, free_bytes: int) -> str | None:
    """None when it fits, else one line: what is needed, what is free, the knob to turn."""
    if fits(est, free_bytes):
        return None
    return (f"preset {name} needs about {gib(needed_bytes(est))} GiB (estimate, peak in the {est.peak_phase} phase) "
            f"but the GPU has {gib(free_bytes)} GiB free; change {knob(est, cfg)}")


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def format_estimate(est: MemoryEstimate) -> str:
    """A short table: every part, the phase totals and the total, in GiB (labelled an estimate)."""
    rows = ["estimated GPU memory (GiB; an estimate, not measured)", f"{'part':<26}{'phase':<10}{'GiB':>7}  note"]
    for p in est.parts:
        if p.bytes:
            rows.append(f"{p.name:<26}{p.group:<10}{p.bytes / GiB:>7.2f}  {p.note}")
    rows.append(f"{'always held':<36}{est.always / GiB:>7.2f}")
    rows.append("phases: " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in est.phases.items())
                + f" (peak: {est.peak_phase})")
    rows.append(f"{'total (always + peak phase)':<36}{est.total / GiB:>7.2f}")
    if est.step_seconds == est.step_seconds:
        rows.append(f"step time: about {est.step_seconds:.0f} s (estimate)")
    return "\n".join(rows)
