"""Loading students and teachers: full precision, 4-bit NF4 + LoRA, 8-bit; CUDA or CPU.

The same functions load the shipped tiny world (``data/models/...``) and any local Hugging Face
checkpoint pair (e.g. a Qwen2.5-0.5B student and a Qwen2.5-1.5B teacher on a GPU machine).
Nothing here downloads: paths must be local folders.
"""

from __future__ import annotations

import gc
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import QUANTS


@dataclass
class LoraSpec:
    """LoRA adapter settings (peft). ``target_modules="all-linear"`` adapts every linear layer."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    extra_trainable: list[str] = field(default_factory=list)


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given (and usable on this machine), else CUDA when present, else CPU."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device; set device: cpu, cuda or cuda:N "
                         f"(or null to pick CUDA when present)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {device!r} asked for, but this machine has no usable CUDA GPU "
                             f"(torch.cuda.is_available() is False); set device: cpu or null")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1}); "
                             f"pick one of them or set device: cuda")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device {device!r} is not supported by the kit; set device: cpu, cuda or cuda:N")
    return dev


def autocast(device: torch.device, dtype: torch.dtype):
    """The context every forward runs in: ``torch.autocast`` to ``dtype`` (bf16 / fp16), or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def compute_dtype(name: str = "auto", device=None) -> torch.dtype:
    """The dtype models compute in: fp32 on CPU; on CUDA bf16, fp16 or fp32 as asked ("auto": bf16 where the
    card supports it, else fp16, e.g. a T4; "fp32": the fp16-safe choice of a card without bf16). bf16
    asked for on a card without it is refused."""
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda" or name == "fp32":
        return torch.float32
    has_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "bf16" and not has_bf16:
        raise ValueError(f"compute_dtype='bf16' but {torch.cuda.get_device_name(dev)} has no bf16 (T4-class "
                         f"cards); set compute_dtype: fp16 (or auto)")
    if name == "fp16" or (name == "auto" and not has_bf16):
        return torch.float16
    return torch.bfloat16


def free_memory() -> None:
    """Between runs in one process: collect cycles (a trainer holds many), return CUDA's cache to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quiet_bitsandbytes() -> None:
    """Silence bitsandbytes' per-matmul float16-cast notice on CPU (real errors still raise)."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def check_model_dir(path: str | Path, role: str) -> Path:
    """Fail early, with the fix, when ``path`` holds no Hugging Face checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{role} checkpoint folder {path} does not exist; pass a local folder made by "
            f"save_pretrained (the tiny world ships data/models/teacher and data/models/student; "
            f"rebuild them with `kdrl-mini build-world`)")
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not (path / "config.json").is_file() or not has_weights:
        raise FileNotFoundError(
            f"{path} holds no {role} model (needs config.json and *.safetensors weights); "
            f"point to a folder written by model.save_pretrained(...)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'config.json'} is not valid JSON ({err}); re-save the {role} with "
                         f"save_pretrained or rebuild it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.json'} is not a model config (a JSON object); re-save the {role}")
    if "auto_map" in config:
        raise ValueError(f"{path} asks to run its own Python code (auto_map in config.json); the kit never runs "
                         f"code from a model folder: use a model whose architecture transformers ships")
    return path


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint folder (left padding for batched generation)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quant_config(quantization: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=False)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _damaged_file(path: Path) -> Path:
    """The first weight file of ``path`` whose safetensors header cannot be read (else ``path``)."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception:  # noqa: BLE001  any unreadable header names this file
            return f
    return path


def load_causal_lm(path: str | Path, quantization: str = "none", device: str | None = None,
                   role: str = "model", dtype: torch.dtype | None = None):
    """``AutoModelForCausalLM.from_pretrained`` on a local folder, optionally quantised.

    quantization: "none" (fp32 on CPU, bf16 on CUDA unless ``dtype``), "4bit" (NF4) or "8bit"
    (LLM.int8), both through bitsandbytes, which runs on CUDA and (>= 0.50) on CPU.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file drowns the kit's own progress bars
    if quantization not in QUANTS:
        raise ValueError(f"quantization={quantization!r}: choose one of {QUANTS}")
    path = check_model_dir(path, role)
    dev = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    kwargs = {"dtype": dtype, "trust_remote_code": False}
    if quantization != "none":
        quiet_bitsandbytes()
        kwargs["quantization_config"] = quant_config(quantization, dtype)
        # bitsandbytes places weights at load time; an explicit map keeps everything on one device.
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ValueError(f"{_damaged_file(path)}: the {role} checkpoint cannot be loaded ({first}); re-save it with "
                         f"save_pretrained, or rebuild it (the tiny world: kdrl-mini build-world)") from None
    if quantization == "none":
        model.to(dev)
    elif quantization == "4bit" and dev.type == "cpu":
        _refuse_misaligned_4bit(model, path)
    if quantization != "none" and dev.type == "cpu":
        # On CPU, unquantised tensors (embeddings, norms) are views into the checkpoint's memory
        # map, which keeps every fp32 weight of the file resident; own copies let it go.
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point():
                    p.data = p.data.clone()
    return model


def _refuse_misaligned_4bit(model, path) -> None:
    """bitsandbytes' 4-bit CPU path is wrong for layers whose input size is not a multiple of
    its quantisation block (64): measured on a hidden-96 model, KL(4-bit || fp32) was 3.8 nats
    per token and accuracy fell from 0.17 to 0. Refuse instead of training on garbage."""
    import bitsandbytes as bnb

    bad = sorted({m.in_features for m in model.modules()
                  if isinstance(m, bnb.nn.Linear4bit) and m.in_features % m.weight.quant_state.blocksize})
    if bad:
        raise ValueError(f"{path}: 4-bit on CPU needs layer input sizes that are multiples of 64, found {bad}; "
                         f"load this model with quantization='none' or '8bit', or use hidden sizes that are multiples of 64")


def disable_cpu_4bit_repacking(model) -> int:
    """Keep 4-bit LoRA gradients right after eval-mode generation on CPU.

    On CPUs with avx512_bf16, the first eval-mode no-grad forward through a bitsandbytes
    ``Linear4bit`` repacks its weight for a faster kernel; later backward passes through the
    repacked weight give wrong gradients or fail. That is exactly GRPO's generate-then-train
    loop, so trainable 4-bit models opt out. Returns how many layers were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def prepare_kbit_student(model, gradient_checkpointing: bool = False):
    """Freeze a k-bit base for LoRA, keeping every unquantised weight in the dtype it was loaded in.

    peft's ``prepare_model_for_kbit_training`` also casts every 16-bit weight (embeddings, LM head,
    norms, biases) to fp32. bitsandbytes' layers return their input's dtype, so one fp32 norm turns
    the whole forward fp32 even under autocast: an fp32 KV cache (2x) in generation, +0.43 GiB of fp32
    embeddings for a 1.5B model, and rollout log-probs that differ from the training forward's. Here
    nothing is cast: the model computes in its load dtype end to end (LoRA weights stay fp32, peft's
    default). Non-reentrant checkpointing needs no input that requires grad.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing, through the name transformers supports: 5.25 renamed
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old name warns);
    older releases only have the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_student(path: str | Path, quantization: str = "4bit", lora: LoraSpec | None = LoraSpec(),
                 device: str | None = None, gradient_checkpointing: bool = False, dtype: torch.dtype | None = None):
    """The trainable student: base weights (4-bit NF4 by default) + LoRA adapters.

    ``lora=None`` trains all weights (only allowed without quantisation: quantised weights
    cannot be trained directly).
    """
    model = load_causal_lm(path, quantization, device, role="student", dtype=dtype)
    if lora is None:
        if quantization != "none":
            raise ValueError(f"a {quantization} student needs LoRA adapters: quantised weights are frozen; "
                             f"pass a LoraSpec or quantization='none'")
        return model
    from peft import LoraConfig, get_peft_model

    if quantization != "none":
        prepare_kbit_student(model, gradient_checkpointing)
        if pick_device(device).type == "cpu":
            disable_cpu_4bit_repacking(model)
    elif gradient_checkpointing:
        enable_checkpointing(model)
        model.enable_input_require_grads()
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM",
                        modules_to_save=lora.extra_trainable or None)
    return get_peft_model(model, config)


def load_teacher(path: str | Path, quantization: str = "8bit", device: str | None = None,
                 dtype: torch.dtype | None = None):
    """The frozen teacher (8-bit by default), in eval mode with gradients off."""
    model = load_causal_lm(path, quantization, device, role="teacher", dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as stored elements x 2."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.dtype == torch.uint8 and hasattr(p, "quant_state"):
            n *= 2  # two 4-bit weights per stored byte
        total += n
    return trainable, total
