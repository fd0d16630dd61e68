"""The shape of a decoder-only transformer, read from its ``config.json`` (a local folder, the hub
cache, or a preset's published numbers), for the memory and time estimates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..model_source import read_model_config


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
    try:
        if Path(name_or_path).expanduser().is_dir():
            return read_model_config(name_or_path)
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(str(name_or_path), "config.json")
        return json.loads(Path(path).read_text()) if isinstance(path, str) else None
    except Exception:  # noqa: BLE001 - missing module, unreadable file, not a repo id: fall back
        return None
