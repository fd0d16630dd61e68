"""Measuring models: parameter counts, weight bytes, resident and peak memory, load times, the
KL a quantisation costs and the greedy answers it changes. The benchmarks and the real-pair docs
use these same functions.

Peak memory is ``VmHWM`` from ``/proc/self/status`` (Linux), which :func:`reset_peak` resets, so a
peak can be measured for one phase of a long-lived process; :func:`measure_load_fresh` measures
a load in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import models
from ..kl import exact_kl
from ..rewards import batch_rewards
from ..rollout import format_prompts, sample
from ..scoring import token_logprobs
from ..utils import REPO_ROOT



def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in a checkpoint folder's safetensors files (tied weights counted once).

    Reads only the file headers, so it is instant and needs no model in memory.
    """
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(model) -> dict[str, int]:
    """Bytes a loaded model holds in weights, split so quantisation savings are visible.

    base: frozen parameters + buffers as stored (fp32 = 4 B, LLM.int8 = 1 B, NF4 = 0.5 B per
    weight); quant_state: the scales quantised weights need (8-bit: one fp32 per output row;
    NF4: one fp32 absmax per 64 weights + the 16-entry code book); lora: adapter parameters
    (names containing ``lora_``); total: their sum. Tied tensors are counted once.
    """
    seen, out = set(), {"base": 0, "quant_state": 0, "lora": 0}
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out["lora" if "lora_" in name else "base"] += _tensor_bytes(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            out["quant_state"] += _tensor_bytes(state.absmax) + _tensor_bytes(state.code)
    # LLM.int8 row scales sit on the weight until the first forward, then move to the layer's state.
    scales = [getattr(p, "SCB", None) for p in model.parameters()]
    scales += [getattr(getattr(m, "state", None), "SCB", None) for m in model.modules()]
    for scb in scales:
        if isinstance(scb, torch.Tensor) and id(scb) not in seen:
            seen.add(id(scb))
            out["quant_state"] += _tensor_bytes(scb)
    out["total"] = sum(out.values())
    return out


def memory_mb() -> dict[str, float]:
    """This process's memory in MB from ``/proc/self/status`` (Linux).

    rss: resident pages; anon: heap memory the process allocated; file: pages of mapped files
    (safetensors are memory-mapped, so fp32 weights used in place show up here); peak: VmHWM,
    the high-water mark of rss since the process started or the last :func:`reset_peak`.
    """
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    return {"rss": kib["VmRSS"] / 1024, "anon": kib["RssAnon"] / 1024, "file": kib["RssFile"] / 1024,
            "peak": kib["VmHWM"] / 1024}


def reset_peak() -> bool:
    """Reset VmHWM to the current rss (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``).
    Returns False where that is not possible (then the peak is since process start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS shows what is still held."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may then include freed-but-kept heap
        pass


def measure_load(model_dir: str | Path, role: str, quantization: str, lora_r: int = 8, threads: int = 1) -> dict:
    """Load one model through the kit's loaders and time it, in this process.

    role "teacher": :func:`kdrl_mini.models.load_teacher`; "student":
    :func:`~kdrl_mini.models.load_student` with LoRA(r=``lora_r``). Returns seconds for
    ``from_pretrained`` (``load_s``; safetensors are memory-mapped, so an fp32 load reads pages
    lazily) and for the first forward of a 16-token input (``first_forward_s``, which touches
    every weight), :func:`weight_bytes`, and memory in MB (see :func:`memory_mb`): ``rss_before``
    and the ``*_added`` growth of rss/anon/file after the forward and a garbage collection,
    plus ``rss_peak`` over the whole load.
    """
    torch.set_num_threads(threads)
    release_freed_memory()
    reset_peak()
    before = memory_mb()
    t0 = time.perf_counter()
    if role == "teacher":
        model = models.load_teacher(model_dir, quantization)
    elif role == "student":
        model = models.load_student(model_dir, quantization, models.LoraSpec(r=lora_r, alpha=2 * lora_r))
    else:
        raise ValueError(f"role={role!r}: choose 'teacher' or 'student'")
    t1 = time.perf_counter()
    with torch.no_grad():
        model(input_ids=torch.arange(1, 17).unsqueeze(0))
    t2 = time.perf_counter()
    release_freed_memory()
    after = memory_mb()
    return {"role": role, "quantization": quantization, "load_s": t1 - t0, "first_forward_s": t2 - t1,
            "bytes": weight_bytes(model), "rss_before_mb": before["rss"],
            "rss_added_mb": after["rss"] - before["rss"], "anon_added_mb": after["anon"] - before["anon"],
            "file_added_mb": after["file"] - before["file"], "rss_peak_mb": after["peak"]}


def measure_load_fresh(model_dir: str | Path, role: str, quantization: str, lora_r: int = 8, threads: int = 1) -> dict:
    """:func:`measure_load` in a fresh Python process, so its peak RSS belongs to this one model.

    The child imports torch, transformers, peft and bitsandbytes before measuring, so the
    ``*_added_mb`` figures and ``rss_peak_mb - rss_before_mb`` belong to the model alone.
    """
    code = ("import json, sys\n"
            "import torch, transformers, peft, bitsandbytes\n"
            "from kdrl_mini.real.measure import measure_load\n"
            "r = measure_load(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))\n"
            "print('RESULT ' + json.dumps(r))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir), role, quantization, str(lora_r), str(threads)],
                          capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {role} ({quantization}) in a fresh process failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def quantization_kl(model_dir: str | Path, prompts: list[str], quantization: str = "8bit",
                    max_new_tokens: int = 32, chat_template: bool = True) -> list[dict]:
    """Exact KL(quantised || fp32) per token of one checkpoint, on the fp32 model's greedy answers.

    For each prompt the fp32 model answers greedily (``rollout.sample``); the fp32 and the
    ``quantization`` ("8bit" or "4bit") loads, both frozen, then score that batch
    (``rollout.token_logprobs``, logits [B, T, V]) and ``kl.exact_kl(logits_q, logits_fp32)``
    gives the KL at every completion position [B, T]. Returns one dict per prompt: mean and
    max KL over its completion tokens, and their count.
    """
    tok = models.load_tokenizer(model_dir)
    full = models.load_teacher(model_dir, "none")
    texts = format_prompts(tok, prompts, chat_template)
    batch = sample(full, tok, texts, max_new_tokens=max_new_tokens, greedy=True)
    with torch.no_grad():
        _, logits_full = token_logprobs(full, batch, return_logits=True)
        del full
        quantized = models.load_teacher(model_dir, quantization)
        _, logits_q = token_logprobs(quantized, batch, return_logits=True)
    kl = exact_kl(logits_q, logits_full)  # [B, T]
    mask = batch.completion_mask.bool()
    return [{"prompt": p, "tokens": int(m.sum()), "mean_kl": float(k[m].mean()), "max_kl": float(k[m].max())}
            for p, k, m in zip(prompts, kl, mask)]


@torch.no_grad()
def greedy_changes(model_a, model_b, tokenizer, rows: list[dict], max_new_tokens: int = 64,
                   batch_size: int = 100, checker: str = "strict") -> dict:
    """Greedy completions of two models on the same prompts, compared text by text and answer by answer.

    Typically ``model_a`` is the fp32 model and ``model_b`` a quantised (or fine-tuned) version of
    it. Both decode greedily (``rollout.sample(..., greedy=True)``) the prompts of ``rows`` (dicts
    with "prompt" and "answer"), ``batch_size`` prompts per call, and each completion is scored
    against its gold answer with ``rewards.batch_rewards``. Both models are put in eval mode for
    the decoding and then back in the mode they were in.

    Returns:
        {"n": rows compared, "accuracy_a", "accuracy_b": shares of correct answers, "changed":
        completions whose text differs, "right_to_wrong": correct under a but not under b,
        "wrong_to_right": the reverse, "texts_a", "texts_b": the completions}.
    """
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    texts, right = {}, {}
    for key, model in (("a", model_a), ("b", model_b)):
        was_training = model.training
        model.eval()
        try:
            texts[key] = [t for i in range(0, len(prompts), batch_size)
                          for t in sample(model, tokenizer, prompts[i:i + batch_size], max_new_tokens=max_new_tokens,
                                          greedy=True).texts]
        finally:
            model.train(was_training)
        right[key] = batch_rewards(texts[key], answers, checker=checker) == 1
    n = len(rows)
    return {"n": n,
            "accuracy_a": float(right["a"].sum()) / max(n, 1), "accuracy_b": float(right["b"].sum()) / max(n, 1),
            "changed": sum(x != y for x, y in zip(texts["a"], texts["b"])),
            "right_to_wrong": int((right["a"] & ~right["b"]).sum()),
            "wrong_to_right": int((~right["a"] & right["b"]).sum()),
            "texts_a": texts["a"], "texts_b": texts["b"]}
