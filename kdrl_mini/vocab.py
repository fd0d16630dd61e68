"""One vocabulary for KD: the logit columns student and teacher share, decided from the tokenizer
before any weights load, and the checks that refuse a pair that does not share one."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from .models import load_tokenizer


def vocab_size_of(model) -> int:
    """Rows of the output embedding (what the logits index)."""
    return model.get_output_embeddings().weight.shape[0]


def config_vocab_rows(config: dict) -> int | None:
    """Logit rows a model's config.json declares (``vocab_size``, or its text model's)."""
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return rows if isinstance(rows, int) and rows > 0 else None


def shared_vocab(tokenizer, student_rows: int | None, teacher_rows: int | None) -> int | None:
    """The logit columns KD compares, decided from the tokenizer before any weights load.

    A model family often pads its embedding rows past the tokenizer (Qwen2.5: 151,665 tokens in
    151,936 rows for 0.5B/1.5B, 152,064 for 7B); the padding rows are no token. Returns None when
    both models have exactly one row per token (nothing to slice), else ``len(tokenizer)``, the
    columns both models' logits are cut to (:func:`restrict_vocab`). A model with fewer rows than
    the tokenizer has tokens is refused: it cannot score them.
    """
    n = len(tokenizer)
    for role, rows in (("student", student_rows), ("teacher", teacher_rows)):
        if rows is not None and rows < n:
            raise ValueError(f"the {role} has {rows} logit rows but the tokenizer has {n} tokens; use the "
                             f"tokenizer saved with these checkpoints")
    return None if student_rows == teacher_rows == n else n


def restrict_vocab(model, n: int | None):
    """Cut ``model``'s logits to the first ``n`` columns (the tokenizer's tokens): a forward hook on
    its output layer, so sampling, scoring and exact KL all see one vocabulary of ``n`` tokens.
    ``n=None`` leaves the model alone. Idempotent; returns the model."""
    if n is None or getattr(model, "kdrl_vocab", None) == n:
        return model
    if getattr(model, "kdrl_vocab", None) is not None:
        raise ValueError(f"this model's logits are already cut to {model.kdrl_vocab} columns, not {n}")
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: out[..., :n])
    model.kdrl_vocab = n
    return model


class _FirstRows(torch.nn.Module):
    """An output layer seen through its first ``n`` rows: ``weight`` and ``bias`` are views of the real ones
    (gradients reach them), so code that reads ``lm_head.weight`` directly sees ``n`` rows too."""

    def __init__(self, head: torch.nn.Module, n: int):
        super().__init__()
        self.head, self.n = head, n

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight[: self.n]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.head.bias is None else self.head.bias[: self.n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


@contextmanager
def first_rows_head(model, n: int | None):
    """Inside the block ``model``'s output layer is its first ``n`` rows (``n=None``: unchanged). For code that
    bypasses the layer's forward, and so :func:`restrict_vocab`'s hook: TRL's fused LM head multiplies by
    ``lm_head.weight`` itself, which would normalise log-probs over every padding row."""
    if n is None:
        yield model
        return
    head = model.get_output_embeddings()
    model.set_output_embeddings(_FirstRows(head, n))
    try:
        yield model
    finally:
        model.set_output_embeddings(head)


def cut_at_padding(sequences: list[list[int]], n: int | None, *aligned: list[list]) -> int:
    """End each sampled sequence (token ids) before its first id ``>= n``, a padding row that is no token
    (vLLM samples from every row of the output layer); ``aligned`` lists (e.g. the per-token log-probs)
    are cut at the same place. In place; returns how many sequences were cut."""
    if n is None:
        return 0
    cut = 0
    for i, ids in enumerate(sequences):
        stop = next((k for k, t in enumerate(ids) if t >= n), None)
        if stop is not None:
            sequences[i] = list(ids[:stop])
            for other in aligned:
                if other is not None:
                    other[i] = list(other[i][:stop])
            cut += 1
    return cut


def check_same_vocab(student, teacher, tokenizer=None) -> None:
    """KD compares distributions over one vocabulary: refuse a pair whose logits differ in width
    after :func:`restrict_vocab` (padding rows beyond the tokenizer are cut, not compared)."""
    vs = getattr(student, "kdrl_vocab", None) or vocab_size_of(student)
    vt = getattr(teacher, "kdrl_vocab", None) or vocab_size_of(teacher)
    if vs != vt:
        raise ValueError(
            f"teacher vocabulary ({vt}) differs from student ({vs}): KD needs one tokenizer; "
            f"load both from the same model family (same tokenizer files)")
    if tokenizer is not None and len(tokenizer) > vs:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the models' vocabulary has {vs}; "
                         f"use the tokenizer saved with these checkpoints")


def check_same_tokenizer(student_dir: str | Path, teacher_dir: str | Path) -> None:
    """KD compares the two models token by token: refuse, before any weights load, a teacher
    whose tokenizer maps text to other ids (same size is not enough)."""
    a, b = load_tokenizer(student_dir), load_tokenizer(teacher_dir)
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        differ = sorted(t for t in set(va) | set(vb) if va.get(t) != vb.get(t))
        raise ValueError(f"teacher tokenizer ({teacher_dir}) differs from the student's ({student_dir}) in "
                         f"{len(differ)} tokens (e.g. {differ[:3]}); KD needs one tokenizer: pair models of one family")
    specials = ("bos_token_id", "eos_token_id", "pad_token_id")
    if any(getattr(a, k) != getattr(b, k) for k in specials):
        raise ValueError(f"teacher and student tokenizers disagree on special tokens "
                         f"({[(k, getattr(a, k), getattr(b, k)) for k in specials]}); use the student's tokenizer files "
                         f"for both")
