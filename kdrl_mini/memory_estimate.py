"""How much GPU memory (and time) one training run should need, before any weight is loaded.

An **estimate**, computed offline from a model's ``config.json`` numbers and a
:class:`~kdrl_mini.config.TrainConfig`. Nothing here has been checked against a GPU yet; the
presets label its numbers "estimate" until someone measures them on the card.

Memory parts (bytes), in three groups:

- **always held**: CUDA context, the weights of student and teacher, LoRA weights with their
  gradients and AdamW states, the rollout's small [B, L] tensors, and the teacher's full logits
  when an exact or top-k KL keeps them;
- **one phase at a time** (the peak is the largest phase, since the phases run one after another):
  ``generate`` (sampling G x prompts_per_step responses: KV cache, prefill, last-token logits),
  ``teacher`` (scoring one micro-batch with the frozen teacher), ``train`` (the student's
  forward/backward on one micro-batch: saved activations and the [B, T, V] logits), ``eval``
  (greedy decoding of up to 100 test rows at once).

``total = sum(always) + max(phase sums)``.

What is exact and what is approximate:

- weight counts follow the architecture exactly (they reproduce the published parameter counts);
  bytes per weight are bitsandbytes' formats: NF4 0.5 B + one fp32 absmax per 64 weights (no double
  quantisation, as the kit loads it), LLM.int8 1 B + one fp32 scale per output row; embeddings,
  the LM head, norms and biases stay in the compute dtype (2 B).
- **approximate**: saved activations per token and layer (a count of the tensors autograd keeps in a
  Qwen2/Llama block with SDPA memory-efficient attention and grouped KV heads expanded; a math-backend
  fallback would add [B, heads, L, L] scores), the logits' 8 bytes per element during the backward
  (compute-dtype logits, their fp32 copy saved by logsumexp, the gradient), the prompt length (a
  padded batch is as long as its longest prompt), the CUDA context (0.4 GiB) and library workspaces
  (0.25 GiB), and allocator fragmentation (not modelled: :func:`fits` keeps 5% of the free memory spare).
- step time is rougher still: FLOPs (2 per parameter per token forward, 4 more backward, 2 more to
  recompute under gradient checkpointing) over an assumed fraction of the card's peak, and decoding
  limited by reading the weights once per generated token plus a fixed launch overhead per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GiB = 2**30
CUDA_CONTEXT = int(0.4 * GiB)       # created by the first CUDA call (so mem_get_info has already paid it)
WORKSPACES = int(0.25 * GiB)         # cuBLAS / bitsandbytes kernels and workspaces, loaded lazily
NF4_BLOCK = 64                       # bitsandbytes NF4 block size: one fp32 absmax per block
CHUNK_BYTES = 2**24 * 4              # scoring.CHUNK_ELEMENTS fp32 elements: one logsumexp chunk
GREEDY_EVAL_BATCH = 100              # rollout.greedy_eval's default batch (read at run time when importable)
EVAL_EXTRA_TOKENS = 16               # loading.EVAL_EXTRA_TOKENS: greedy eval decodes max_new_tokens + 16
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "auto": 2, "fp32": 4}
PHASES = ("generate", "teacher", "train", "eval")

# Fractions of the card's peak dense tensor FLOPs that each kind of matmul reaches (assumptions).
EFFICIENCY = {"none": 0.35, "4bit": 0.20, "8bit": 0.10}
# Bytes read per weight per decoded token (4-bit: dequantise to 16-bit, then a 16-bit matmul).
DECODE_BYTES = {"none": 2.0, "4bit": 4.5, "8bit": 4.0}
LAUNCH_S_PER_LAYER = 1e-3            # eager PyTorch + peft + bitsandbytes: launches and Python per layer per token


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on (``config.json`` names in
    :meth:`from_config`)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int | None = None
    qkv_bias: bool = True           # Qwen2 has biases on q, k, v

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        """From a ``config.json`` dict (Qwen2 / Llama field names)."""
        need = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
        missing = [k for k in need if not isinstance(config.get(k), int)]
        if missing:
            raise ValueError(f"model config lacks {missing}; pass a config.json of a decoder-only model "
                             f"(Qwen2/Llama fields)")
        heads = config["num_attention_heads"]
        bias = config.get("attention_bias")
        return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                   intermediate=config["intermediate_size"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads, vocab=config["vocab_size"],
                   tied=bool(config.get("tie_word_embeddings", False)), head_dim=config.get("head_dim"),
                   qkv_bias=bool(bias) if bias is not None else config.get("model_type", "qwen2") == "qwen2")

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.dim_head

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim_head

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of the seven linear layers of one block (what bitsandbytes quantises)."""
        h = self.hidden
        return h * self.q_dim * 2 + h * self.kv_dim * 2 + 3 * h * self.intermediate

    @property
    def linear_rows_per_layer(self) -> int:
        """Output rows of the seven linears (LLM.int8 keeps one fp32 scale per row)."""
        return self.q_dim + 2 * self.kv_dim + self.hidden + 2 * self.intermediate + self.hidden

    @property
    def small_params_per_layer(self) -> int:
        """Norm weights and q/k/v biases of one block (kept in the compute dtype)."""
        return 2 * self.hidden + ((self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0)

    @property
    def embedding_params(self) -> int:
        """Input embedding plus an untied LM head (never quantised)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def parameters(self) -> int:
        L = self.layers
        return L * (self.linear_params_per_layer + self.small_params_per_layer) + self.embedding_params + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.layers * 2 * self.kv_dim * dtype_bytes

    def saved_elements_per_token_layer(self) -> int:
        """Tensors autograd keeps per token in one block (approximate; see the module docstring):
        two RMSNorms (input and its fp32 copy: 3h each); q and k before rotary embedding and their
        rotated halves (2 (q + kv)); rotated q, and K and V expanded to all heads for SDPA (3q); the
        attention output and o_proj's contiguous input (2q); four MLP tensors (gate, up, SiLU(gate),
        their product: 4 intermediate). So 6h + 7q + 2kv + 4i."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        return 6 * h + 2 * (q + kv) + 3 * q + 2 * q + 4 * self.intermediate


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    group: str        # "always" or one of PHASES
    note: str = ""


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


def _train_activations(shape: ModelShape, rows: int, length: int, checkpointing: bool, dtype_bytes: int) -> int:
    tokens = rows * length
    full_layer = tokens * shape.saved_elements_per_token_layer() * dtype_bytes
    if checkpointing:  # each block keeps its input; one block's activations are rebuilt at a time
        kept = shape.layers * tokens * shape.hidden * dtype_bytes + full_layer
    else:
        kept = shape.layers * full_layer
    final_norm = tokens * 4 * shape.hidden * dtype_bytes  # final RMSNorm (+fp32 copy) and the head's input
    mask = rows * length * length * dtype_bytes            # the 4-D attention mask SDPA receives
    return kept + final_norm + mask


def estimate(cfg, student: dict | ModelShape, teacher: dict | ModelShape, prompt_tokens: int = 256,
             tflops: float | None = None, bandwidth_gbs: float | None = None) -> MemoryEstimate:
    """Peak GPU memory of one run of ``cfg`` (a TrainConfig) with these model shapes.

    ``student``/``teacher``: ``config.json`` dicts or :class:`ModelShape`; ``prompt_tokens``: the
    padded prompt length (chat template + question + instruction). ``tflops`` (dense 16-bit
    tensor peak) and ``bandwidth_gbs`` of the card give a step-time estimate (NaN without them).
    """
    s = student if isinstance(student, ModelShape) else ModelShape.from_config(student)
    t = teacher if isinstance(teacher, ModelShape) else ModelShape.from_config(teacher)
    db = DTYPE_BYTES[cfg.compute_dtype]
    P, T, G, N = prompt_tokens, cfg.max_new_tokens, cfg.group_size, cfg.prompts_per_step
    B, L = G * N, prompt_tokens + cfg.max_new_tokens
    mb = min(cfg.micro_batch_size or B, B)
    teacher_rows = min(B, max(G, (mb // G) * G))  # scoring.score_groups: whole groups per call
    eval_rows = min(cfg.eval_size, _greedy_batch())
    lora = lora_parameters(s, cfg.lora_r) if cfg.lora_r > 0 else s.parameters
    keep_teacher_logits = cfg.kl_kind in ("exact", "topk") or bool(cfg.log_exact_kl)
    layer_tmp = lambda shape, rows, n: rows * n * (4 * shape.hidden + 3 * shape.intermediate) * db  # noqa: E731

    parts = [
        Part("cuda context", CUDA_CONTEXT, "always", "driver + runtime, taken at the first CUDA call"),
        Part("workspaces", WORKSPACES, "always", "cuBLAS and bitsandbytes kernels"),
        Part("student weights", _weights_bytes(s, cfg.student_quant, db), "always", cfg.student_quant),
        Part("teacher weights", _weights_bytes(t, cfg.teacher_quant, db), "always", cfg.teacher_quant),
        Part("trainable + AdamW", lora * 16, "always", "fp32 weight, gradient, two moments"),
        Part("rollout tensors", B * L * 8 * 4, "always", "ids, masks, log-probs [B, L]"),
        Part("teacher logits kept", B * T * t.vocab * 4 if keep_teacher_logits else 0, "always",
             "exact/top-k KL: fp32 [B, T, V]"),
        # generate: G x prompts_per_step sequences at once
        Part("KV cache (rollout)", B * L * s.kv_bytes_per_token(db), "generate", f"{B} x {L} tokens"),
        Part("prefill + sampling", layer_tmp(s, B, P) + 3 * B * s.vocab * 4, "generate",
             "one block's temporaries over the prompts; last-token logits"),
        # teacher: one micro-batch (whole groups), no gradients
        Part("teacher KV + temporaries", teacher_rows * L * t.kv_bytes_per_token(db) + layer_tmp(t, teacher_rows, L),
             "teacher", f"{teacher_rows} rows"),
        Part("teacher logits", teacher_rows * T * t.vocab * db + 2 * CHUNK_BYTES, "teacher", "[mb, T, V]"),
        # train: the student's forward/backward on one micro-batch
        Part("activations", _train_activations(s, mb, L, cfg.gradient_checkpointing, db), "train",
             f"{mb} x {L} tokens, checkpointing {'on' if cfg.gradient_checkpointing else 'off'}"),
        Part("student logits", mb * T * s.vocab * (db + 4 + db), "train", "[mb, T, V]: 16-bit, fp32 copy, gradient"),
        # eval: greedy decoding
        Part("KV cache (eval)", eval_rows * (L + EVAL_EXTRA_TOKENS) * s.kv_bytes_per_token(db)
             + layer_tmp(s, eval_rows, P) + 3 * eval_rows * s.vocab * 4, "eval", f"{eval_rows} rows"),
    ]
    est = MemoryEstimate(parts, detail={"student_params": s.parameters, "teacher_params": t.parameters,
                                        "trainable_params": lora, "rollouts": B, "micro_batch": mb,
                                        "sequence_length": L})
    if tflops and bandwidth_gbs:
        est.step_seconds = step_seconds(cfg, s, t, P, tflops, bandwidth_gbs)
        est.detail["eval_seconds"] = eval_seconds(cfg, s, P, bandwidth_gbs)
    return est


def _greedy_batch() -> int:
    try:
        import inspect

        from .rollout import greedy_eval

        return int(inspect.signature(greedy_eval).parameters["batch_size"].default)
    except Exception:  # noqa: BLE001 - any import problem: the documented default
        return GREEDY_EVAL_BATCH


def _decode_seconds(shape: ModelShape, quant: str, rows: int, context: int, steps: int, bandwidth_gbs: float) -> float:
    """Decoding ``steps`` tokens for ``rows`` sequences: weights and KV cache read once per token."""
    weights = shape.layers * shape.linear_params_per_layer * DECODE_BYTES[quant] + shape.vocab * shape.hidden * 2
    kv = rows * context * shape.kv_bytes_per_token()
    return steps * ((weights + kv) / (bandwidth_gbs * 1e9) + shape.layers * LAUNCH_S_PER_LAYER)


def step_seconds(cfg, s: ModelShape, t: ModelShape, prompt_tokens: int, tflops: float, bandwidth_gbs: float) -> float:
    """One training step (rollout, teacher scoring, student update): a rough estimate."""
    P, T, B = prompt_tokens, cfg.max_new_tokens, cfg.group_size * cfg.prompts_per_step
    peak = tflops * 1e12
    generate = _decode_seconds(s, cfg.student_quant, B, P + T // 2, T, bandwidth_gbs)
    teacher_tokens = cfg.prompts_per_step * P + B * T  # score_groups encodes each prompt once
    teacher = 2 * t.parameters * teacher_tokens / (peak * EFFICIENCY[cfg.teacher_quant])
    per_token = 2 + 4 + (2 if cfg.gradient_checkpointing else 0)
    train = cfg.ppo_epochs * per_token * s.parameters * B * (P + T) / (peak * EFFICIENCY[cfg.student_quant])
    return generate + teacher + train


def eval_seconds(cfg, s: ModelShape, prompt_tokens: int, bandwidth_gbs: float) -> float:
    """One greedy evaluation of ``eval_size`` rows (decoding to the budget; rough)."""
    rows, batch = cfg.eval_size, min(cfg.eval_size, _greedy_batch())
    steps = cfg.max_new_tokens + EVAL_EXTRA_TOKENS
    return math.ceil(rows / batch) * _decode_seconds(s, cfg.student_quant, batch, prompt_tokens + steps // 2, steps,
                                                     bandwidth_gbs)


def run_seconds(cfg, est: MemoryEstimate) -> float:
    """One run: max_steps steps plus its evaluations (every ``eval_every`` steps and at the end)."""
    evals = (cfg.max_steps // cfg.eval_every if cfg.eval_every else 0) + (
        0 if cfg.eval_every and cfg.max_steps % cfg.eval_every == 0 else 1)
    return cfg.max_steps * est.step_seconds + evals * est.detail.get("eval_seconds", float("nan"))


def resolve_model_config(name_or_path: str, fallback: dict | None, use_source: bool = True) -> tuple[dict, str]:
    """The model's ``config.json`` dict and where it came from, without touching the network.

    A real config is preferred: a local folder's (through ``kdrl_mini.model_source``), or a hub id's
    copy already in the Hugging Face cache (after the first run downloaded it). Otherwise ``fallback``
    (a preset's published numbers) is used. Raises ValueError when neither is available.
    """
    if use_source:
        config = _cached_config(name_or_path)
        if isinstance(config, dict) and config.get("hidden_size"):
            return config, "config.json"
    if fallback:
        return dict(fallback), "preset numbers"
    raise ValueError(f"no config.json for {name_or_path} (not a local folder, not in the hub cache); download the "
                     f"model once or give its numbers in the preset's about.models block")


def _cached_config(name_or_path: str) -> dict | None:
    import json
    from pathlib import Path

    try:
        if Path(name_or_path).expanduser().is_dir():
            from .model_source import read_model_config

            return read_model_config(name_or_path)
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(str(name_or_path), "config.json")
        return json.loads(Path(path).read_text()) if isinstance(path, str) else None
    except Exception:  # noqa: BLE001 - missing module, unreadable file, not a repo id: fall back
        return None


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
        if (cfg.micro_batch_size or cfg.group_size) > cfg.group_size:
            return f"--set micro_batch_size={cfg.group_size}"
        return (f"--set max_new_tokens={cfg.max_new_tokens // 2} (the teacher scores whole groups of "
                f"{cfg.group_size}) or a smaller teacher")
    if phase == "eval":
        return f"--set eval_size={max(1, min(cfg.eval_size, _greedy_batch()) // 2)} or lower max_new_tokens"
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
