"""Scoring a sampled batch: token log-probs and per-position diagnostics, without keeping [B, T, V].

At a real vocabulary one fp32 ``[B, T, V]`` tensor is gigabytes (V = 151,936: 1.9 GB at
B = 64, T = 48). So log-probs are a logsumexp minus a gather, done a few rows at a time on the
model's own logits (no full ``log_softmax`` copy); the teacher is run a micro-batch at a time and
returns ``[B, T]`` log-probs unless full logits are asked for (exact / top-k KL); entropy and
exact KL are per-position reductions done in the same row chunks.
"""

from __future__ import annotations

import torch

from .batch import Batch
from .kl import entropy, exact_kl

CHUNK_ELEMENTS = 2**24  # ~64 MB of fp32 logits per chunk of rows


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] positions counted from each row's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _row_chunks(n_rows: int, per_row: int):
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""log softmax(z / temperature)[y] = z_y / temperature - logsumexp(z / temperature).

    Args:
        logits: [B, T, V] (any float dtype; computed in fp32 a few rows at a time).
        targets: [B, T] token ids.

    Returns:
        [B, T] fp32 log-probs; differentiable with respect to ``logits``.
    """
    out = []
    for sl in _row_chunks(logits.shape[0], logits.shape[1] * logits.shape[2]):
        z = logits[sl].float()
        if temperature != 1.0:
            z = z / temperature
        out.append(z.gather(-1, targets[sl].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.cat(out) if out else logits.new_zeros(targets.shape, dtype=torch.float32)


def completion_logits(model, batch: Batch) -> torch.Tensor:
    """The logits that predict each completion token: [B, T, V] (a view of the model output).

    Only the completion positions go through the vocabulary-sized head (``logits_to_keep``),
    and no KV cache is built (``use_cache=False``).
    """
    pos = position_ids_from_mask(batch.attention_mask)
    T = batch.input_ids.shape[1] - batch.prompt_len
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                logits_to_keep=T + 1, use_cache=False)
    return out.logits[:, :-1, :]


def token_logprobs(model, batch: Batch, return_logits: bool = False, temperature: float = 1.0):
    """Log-probs [B, T] of the completion tokens under ``model`` at ``temperature``.

    logp[b, t] = log softmax(z_{b, P+t-1} / temperature)[y_{b, P+t}]
    With ``return_logits`` also the completion positions' logits [B, T, V] (unscaled).
    Gradients flow when called outside ``torch.no_grad``.
    """
    logits = completion_logits(model, batch)
    logp = logprobs_from_logits(logits, batch.completion_ids, temperature)
    return (logp, logits) if return_logits else logp


@torch.no_grad()
def score_in_micro_batches(model, batch: Batch, micro_batch_size: int | None, keep_logits: bool = False,
                           temperature: float = 1.0):
    """``token_logprobs`` of a frozen model over the batch, ``micro_batch_size`` rows at a time.

    Returns (logp [B, T], logits [B, T, V] or None). Only with ``keep_logits`` is a
    vocabulary-sized tensor kept (needed for exact / top-k KL).
    """
    B = batch.input_ids.shape[0]
    step = micro_batch_size or B
    logps, logits = [], []
    for i in range(0, B, step):
        lp, z = token_logprobs(model, batch.rows(slice(i, i + step)), return_logits=True, temperature=temperature)
        logps.append(lp)
        if keep_logits:
            logits.append(z.float())
    return torch.cat(logps), (torch.cat(logits) if keep_logits else None)


@torch.no_grad()
def position_stats(logits: torch.Tensor, mask: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                   temperature: float = 1.0) -> dict[str, torch.Tensor]:
    r"""Sums over response positions of the student's entropy and, with teacher logits, the exact
    KL(student || teacher): H_t = -\sum_v p_v \log p_v, KL_t = \sum_v p_v (\log p_v - \log q_v).

    Args:
        logits, teacher_logits: [B, T, V]; mask: [B, T].

    Returns:
        {"entropy_sum", "exact_kl_sum"?, "tokens"} as 0-dim tensors (sums, so micro-batches add up).
    """
    m = mask.bool()
    ent = logits.new_zeros((), dtype=torch.float32)
    kl = ent.clone()
    for sl in _row_chunks(logits.shape[0], logits.shape[1] * logits.shape[2]):
        z = logits[sl].float() / temperature
        # The logged entropy counts a position whose logits hold NaN or +inf as 0 (entropy itself
        # returns NaN there); the exact_kl sum below stays NaN.
        h = entropy(z).nan_to_num(0.0)
        ent = ent + torch.where(m[sl], h, torch.zeros_like(h)).sum()
        if teacher_logits is not None:
            k = exact_kl(z, teacher_logits[sl].float())
            kl = kl + torch.where(m[sl], k, torch.zeros_like(k)).sum()
    out = {"entropy_sum": ent, "tokens": m.sum()}
    if teacher_logits is not None:
        out["exact_kl_sum"] = kl
    return out


def kv_cache(output):
    """The KV cache of a model output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    return output["cache"] if "cache" in output else output.past_key_values


def cache_kwarg(model, cache) -> dict:
    """Pass a KV cache under the name this transformers version's forward takes."""
    import inspect

    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


@torch.no_grad()
def score_groups(model, batch: Batch, group_size: int, micro_batch_size: int | None = None,
                 keep_logits: bool = False):
    """Like :func:`score_in_micro_batches` for a frozen model, but each group's prompt is encoded
    once: a forward over the N distinct prompts fills a KV cache, which is repeated G times and
    the G completions are scored against it. Saves (G - 1) / G of the prompt work (the teacher's
    forward is the largest extra cost of KDRL over GRPO).

    Returns (logp [B, T], logits [B, T, V] or None), equal to the plain forward up to float rounding.
    """
    B, P, G = batch.input_ids.shape[0], batch.prompt_len, group_size
    pos = position_ids_from_mask(batch.attention_mask)
    groups_per_call = max(1, (micro_batch_size or B) // G)
    logps, kept = [], None
    for g in range(0, B // G, groups_per_call):
        rows = slice(g * G, min(B, (g + groups_per_call) * G))
        ids, attn, p = batch.input_ids[rows], batch.attention_mask[rows], pos[rows]
        head = model(input_ids=ids[::G, :P], attention_mask=attn[::G, :P], position_ids=p[::G, :P],
                     use_cache=True, logits_to_keep=1)
        cache = kv_cache(head)
        cache.batch_repeat_interleave(G)
        tail = model(input_ids=ids[:, P:], attention_mask=attn, position_ids=p[:, P:], use_cache=True,
                     **cache_kwarg(model, cache))
        first = head.logits[:, -1:].repeat_interleave(G, dim=0)  # predicts each completion's first token
        logps.append(torch.cat([logprobs_from_logits(first, ids[:, P:P + 1]),
                                logprobs_from_logits(tail.logits[:, :-1], ids[:, P + 1:])], dim=1))
        if keep_logits:  # filled in place: one [B, T, V] tensor, no list of chunks to concatenate
            if kept is None:
                kept = first.new_empty((B, ids.shape[1] - P, first.shape[-1]), dtype=torch.float32)
            kept[rows, :1], kept[rows, 1:] = first, tail.logits[:, :-1]
    return torch.cat(logps), kept
