"""Where a student or teacher comes from: a local folder, or a Hugging Face hub id fetched once.

``resolve_model("data/models/student", "student")`` returns the folder as it is (checked by
:func:`kdrl_mini.models.check_model_dir`); ``resolve_model("Qwen/Qwen2.5-0.5B-Instruct", "student")``
downloads, into the hub cache, only what a causal LM needs (config and tokenizer files and
``*.safetensors`` weights; never pickled ``*.bin``/``*.pt`` files, never subfolders) and returns
the cached snapshot folder. With HF_HUB_OFFLINE set only the cache is used. Models that ask to run
their own code (``auto_map``) are refused before their weights are fetched.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import models
from .utils import hub_offline, is_hub_id

ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
IGNORE_PATTERNS = ["*/*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]  # subfolders, pickles


def offline_fix(repo_id: str, role: str) -> str:
    """How to get a model onto a machine without the hub (or to let the run use the hub)."""
    unset = ", or unset HF_HUB_OFFLINE if this machine can reach the hub" if hub_offline() else ""
    return (f"on a machine with network run `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here and "
            f"set {role}_path: DIR{unset}")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def hub_error(err: BaseException, repo_id: str, role: str) -> OSError:
    """One-line error for a failed hub fetch: not found / gated, or offline and not cached."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(err, GatedRepoError):
        return PermissionError(f"{role} model {repo_id} is gated on the hub; accept its licence on its hub page and "
                               f"log in (hf auth login), or {offline_fix(repo_id, role)}")
    if isinstance(err, RepositoryNotFoundError):
        return FileNotFoundError(f"{role} model {repo_id}: no such local folder, and no such hub repository "
                                 f"(or it is private: hf auth login); check {role}_path")
    reached = isinstance(err, FileNotFoundError | ConnectionError | TimeoutError)  # no answer from the hub
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached" if reached else _first_line(err)
    return ConnectionError(f"{role} model {repo_id}: no such local folder, and as a hub id it is not in the local "
                           f"cache ({why}); {offline_fix(repo_id, role)}")


def _fetch(repo_id: str, role: str, filename: str | None = None) -> Path:
    """The cached snapshot folder of ``repo_id`` (``filename``: only that file, returned as its path)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    offline = hub_offline()
    try:
        if filename is not None:
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
                                      local_files_only=offline))
    except EntryNotFoundError as err:
        if isinstance(err, FileNotFoundError):  # LocalEntryNotFoundError: offline and not cached
            raise hub_error(err, repo_id, role) from None
        raise FileNotFoundError(f"{role} model {repo_id} has no {filename} on the hub; it is not a transformers "
                                f"model: pick a causal LM repository") from None
    except (OSError, TimeoutError) as err:  # ConnectionError, HTTP errors, offline mode
        raise hub_error(err, repo_id, role) from None


def parse_config(path: Path, name: str, role: str) -> dict:
    """A config.json as a dict, or a one-line error naming the model."""
    try:
        config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{role} model {name}: config.json is not valid JSON ({err}); re-save the model with "
                         f"save_pretrained") from None
    if not isinstance(config, dict):
        raise ValueError(f"{role} model {name}: config.json is not a model config (a JSON object)")
    return config


def read_model_config(name_or_path: str | Path, role: str = "model") -> dict:
    """The model's config.json as a dict (architecture sizes, context length, dtype, ...).

    A local folder is read as it is; a hub id fetches only config.json (or reads it from the
    cache offline). Nothing is refused here (a memory estimate may look at any config)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json; point to a folder written by save_pretrained")
        return parse_config(local / "config.json", str(name_or_path), role)
    if not is_hub_id(str(name_or_path)):
        raise FileNotFoundError(f"{role} model {name_or_path}: no such folder, and not a hub id (owner/name); pass a "
                                f"local folder or a hub id such as Qwen/Qwen2.5-0.5B-Instruct")
    return parse_config(_fetch(str(name_or_path), role, "config.json"), str(name_or_path), role)


def refuse_remote_code(config: dict, name: str, role: str) -> None:
    """The kit never runs code from a model repository (``auto_map`` in config.json)."""
    if "auto_map" in config:
        raise ValueError(f"{role} model {name} asks to run its own Python code (auto_map in config.json); the kit "
                         f"never runs code from a model repository: use a model whose architecture transformers ships")


def resolve_model(name_or_path: str | Path, role: str) -> Path:
    """A local checkpoint folder for ``name_or_path`` (a folder, or a hub id fetched into the cache).

    A local folder (or anything that is not an "owner/name" hub id) goes through
    :func:`kdrl_mini.models.check_model_dir` unchanged. A hub id: config.json first (``auto_map``
    refused before any weights move), then the snapshot; weights must be ``*.safetensors``."""
    name = str(name_or_path)
    if not is_hub_id(name):
        return models.check_model_dir(name_or_path, role)
    refuse_remote_code(read_model_config(name, role), name, role)
    folder = _fetch(name, role)
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{role} model {name} has no *.safetensors weights (the kit never loads pickled "
                                f"*.bin weights); pick a repository with safetensors, or convert it locally and set "
                                f"{role}_path to that folder")
    return models.check_model_dir(folder, role)
