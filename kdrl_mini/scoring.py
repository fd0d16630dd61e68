"""Scoring a sampled batch: token log-probs and per-position diagnostics, without keeping [B, T, V].

At a real vocabulary one fp32 ``[B, T, V]`` tensor is gigabytes (V = 151,936: 592 MiB for a single
row of T = 1,024). So the vocabulary-sized head runs a chunk of *tokens* at a time on the decoder's
final hidden states (:func:`head_token_stats`): each chunk's logits become log-probs (a logsumexp
minus a gather), entropy and, when asked, the exact or top-k KL to the teacher, whose logits are
rebuilt chunk by chunk from its kept final hidden states, and are dropped; with gradients the
chunk is recomputed in the backward pass (activation checkpointing), so the training forward never
holds more than one chunk of logits either. The teacher is run a micro-batch at a time (below a
group when asked) and returns ``[B, T]`` log-probs, plus its hidden states [B, T, H] for a KL that
sums over the vocabulary (``keep_hidden``), or full logits only where asked (``keep_logits``, the
TRL path).
"""

from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint

from .batch import Batch
from .kl import entropy, exact_kl

CHUNK_ELEMENTS = 2**24  # ~64 MB of fp32 logits per chunk (of rows, or of tokens through the head)


def tokens_per_chunk(vocab: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Tokens whose fp32 logits fit in ``budget`` elements (110 at V = 151,936)."""
    return max(1, budget // max(vocab, 1))


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


def completion_hidden(model, batch: Batch, start: int | None = None) -> torch.Tensor:
    """The decoder's final hidden states that predict each completion token: [B, T, H] (no head).

    ``model.get_decoder()`` is the transformer without its vocabulary-sized output layer (through
    peft too); the head is applied later, a chunk of tokens at a time (:func:`head_token_stats`).
    """
    pos = position_ids_from_mask(batch.attention_mask)
    out = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                              use_cache=False)
    return out.last_hidden_state[:, (batch.prompt_len - 1 if start is None else start):-1]


def _chunk_stats(head, h, y, temperature, ref_head, ref_h, with_entropy, kl_kind, top_k, with_kl):
    z = head(h).float()
    if temperature != 1.0:
        z = z / temperature
    logp = z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    ref, loss_kl = None, None
    if ref_h is not None:
        with torch.no_grad():
            ref = ref_head(ref_h).float()  # the teacher's logits of this chunk, unscaled (rebuilt, never kept)
        if kl_kind is not None:  # differentiable: the loss's exact or top-k KL(student || teacher)
            loss_kl = exact_kl(z, ref, "reverse", top_k if kl_kind == "topk" else None)
    with torch.no_grad():
        # The logged entropy counts a position whose logits hold NaN or +inf as 0 (entropy itself is NaN there).
        ent = entropy(z).nan_to_num(0.0) if with_entropy else z.new_zeros(())
        if ref is None or not with_kl:
            kl = z.new_zeros(())
        else:
            kl = loss_kl.detach() if kl_kind == "exact" else exact_kl(z, ref)
    return logp, ent, kl, (z.new_zeros(()) if loss_kl is None else loss_kl)


def head_token_stats(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                     ref_head=None, ref_hidden: torch.Tensor | None = None, chunk_tokens: int | None = None,
                     with_entropy: bool = True, kl_kind: str | None = None, top_k: int | None = None,
                     with_kl: bool = True):
    r"""Log-probs of ``targets`` through the output layer ``head``, a chunk of tokens at a time.

        logp_t = z_{t, y_t} / \tau - logsumexp(z_t / \tau),   z_t = head(h_t)

    Args:
        head: the model's output layer (``model.get_output_embeddings()``; a vocabulary cut by
            ``vocab.restrict_vocab`` applies through its hook).
        hidden: [B, T, H] final hidden states; targets: [B, T] token ids.
        ref_head, ref_hidden: optional teacher output layer and its final hidden states [B, T, H_T]:
            each chunk rebuilds the teacher's logits q_t = ref_head(ref_h_t) (unscaled) next to the
            student's, for the exact KL, so neither model's [B, T, V] logits exist.
        chunk_tokens: tokens per chunk (default: :func:`tokens_per_chunk` of the head's rows).
        kl_kind: "exact" or "topk" (with ``top_k``): also return that KL(student || teacher) per token,
            differentiable (KD-RKL / KDRL losses that sum over the vocabulary); None: no loss KL.
        with_kl: also the logged exact KL (False: a top-k loss does not pay for a full-vocabulary sum
            nobody reads, in the forward and again in the backward's recompute).

    Returns:
        (logp [B, T] fp32, differentiable w.r.t. ``hidden`` and the head; entropy [B, T] (None without
        ``with_entropy``); exact KL(student || teacher) [B, T] or None, both detached, for logging;
        the loss KL [B, T] of ``kl_kind`` or None). With gradients each chunk's logits (and the
        teacher's) are rebuilt in the backward pass, so only one chunk's [tokens, V] logits and their
        temporaries live at a time: measured on CPU at V = 151,936, about 5 chunk budgets with the
        entropy (its log-softmax and product), about 3 without
        (tests/test_scoring.py::test_token_chunked_head_peak_is_set_by_the_chunk_budget).
    """
    if kl_kind is not None and ref_hidden is None:
        raise ValueError(f"kl_kind={kl_kind!r} needs the teacher's ref_head and ref_hidden")
    B, T, H = hidden.shape
    h, y = hidden.reshape(B * T, H), targets.reshape(B * T)
    ref = None if ref_hidden is None else ref_hidden.reshape(B * T, ref_hidden.shape[-1])
    step = chunk_tokens or tokens_per_chunk(head.weight.shape[0])
    grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for i in range(0, B * T, step):
        args = (head, h[i:i + step], y[i:i + step], temperature, ref_head, None if ref is None else ref[i:i + step],
                with_entropy, kl_kind, top_k, with_kl)
        parts.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args))
    if not parts:
        empty = hidden.new_zeros((B, T), dtype=torch.float32)
        return (empty, (empty if with_entropy else None), (None if ref is None or not with_kl else empty),
                (None if kl_kind is None else empty))
    logp, ent, kl, loss_kl = (torch.cat(x).view(B, T) if x[0].dim() else None for x in zip(*parts))
    return logp, ent, kl, loss_kl


def student_token_stats(model, batch: Batch, temperature: float = 1.0, teacher=None,
                        teacher_hidden: torch.Tensor | None = None, chunk_tokens: int | None = None,
                        kl_kind: str | None = None, top_k: int | None = None, with_kl: bool = True):
    """``head_token_stats`` of ``model``'s completion positions, against ``teacher``'s output layer on
    its kept hidden states [B, T, H_T] when given: (logp, entropy, exact KL or None, loss KL or None)."""
    ref_head = None if teacher is None else teacher.get_output_embeddings()
    return head_token_stats(model.get_output_embeddings(), completion_hidden(model, batch), batch.completion_ids,
                            temperature, ref_head, teacher_hidden, chunk_tokens, kl_kind=kl_kind, top_k=top_k,
                            with_kl=with_kl)


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
                           temperature: float = 1.0, keep_hidden: bool = False):
    """``token_logprobs`` of a frozen model over the batch, ``micro_batch_size`` rows at a time.

    Returns (logp [B, T], kept): kept is the logits [B, T, V] with ``keep_logits`` (the only case with a
    vocabulary-sized tensor), the final hidden states [B, T, H] with ``keep_hidden`` (as
    :func:`score_groups`), else None.
    """
    B = batch.input_ids.shape[0]
    step = micro_batch_size or B
    logps, kept = [], []
    for i in range(0, B, step):
        rows = batch.rows(slice(i, i + step))
        if keep_logits:
            lp, z = token_logprobs(model, rows, return_logits=True, temperature=temperature)
            kept.append(z.float())
        else:  # through the token-chunked head: no [rows, T, V] tensor
            h = completion_hidden(model, rows)
            lp = head_token_stats(model.get_output_embeddings(), h, rows.completion_ids, temperature,
                                  with_entropy=False)[0]
            if keep_hidden:
                kept.append(h)
        logps.append(lp)
    return torch.cat(logps), (torch.cat(kept) if kept else None)


def kv_cache(output):
    """The KV cache of a model output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    return output["cache"] if "cache" in output else output.past_key_values


def cache_kwarg(model, cache) -> dict:
    """Pass a KV cache under the name this transformers version's forward takes."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def _group_calls(B: int, G: int, rows_per_call: int):
    """Row slices of one teacher call each, never straddling a group boundary mid-slice: whole groups
    when ``rows_per_call >= G``, else pieces of one group of at most ``rows_per_call`` rows."""
    if rows_per_call >= G:
        per = (rows_per_call // G) * G
        return [slice(i, min(B, i + per)) for i in range(0, B, per)]
    return [slice(g + i, min(g + G, g + i + rows_per_call)) for g in range(0, B, G) for i in range(0, G, rows_per_call)]


@torch.no_grad()
def score_groups(model, batch: Batch, group_size: int, micro_batch_size: int | None = None,
                 keep_logits: bool = False, temperature: float = 1.0, keep_hidden: bool = False):
    """Like :func:`score_in_micro_batches` for a frozen model, but each call's prompt is encoded
    once: a forward over its distinct prompts fills a KV cache, which is repeated for each of their
    completions, and the completions are scored against it. Saves (G - 1) / G of the prompt work (the
    teacher's forward is the largest extra cost of KDRL over GRPO). A call holds whole groups, or,
    with ``micro_batch_size < group_size``, a piece of one group (its prompt encoded once per piece).

    The head runs a chunk of tokens at a time on the decoder's hidden states (:func:`head_token_stats`),
    so without ``keep_logits`` no [rows, T, V] tensor exists. Returns (logp [B, T], kept), kept being
    the logits [B, T, V] fp32 with ``keep_logits``, the final hidden states [B, T, H] with
    ``keep_hidden`` (the exact / top-k KL rebuilds the logits from them a chunk of tokens at a time:
    :func:`head_token_stats`), else None; equal to the plain forward up to float rounding.
    """
    B, P, G = batch.input_ids.shape[0], batch.prompt_len, group_size
    pos = position_ids_from_mask(batch.attention_mask)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    logps, kept = [], None
    for rows in _group_calls(B, G, micro_batch_size or B):
        ids, attn, p = batch.input_ids[rows], batch.attention_mask[rows], pos[rows]
        n = ids.shape[0]
        first = slice(None, None, G) if n >= G else slice(0, 1)  # one row per distinct prompt
        repeat = G if n >= G else n
        prompt = decoder(input_ids=ids[first, :P], attention_mask=attn[first, :P], position_ids=p[first, :P],
                         use_cache=True)
        cache = kv_cache(prompt)
        cache.batch_repeat_interleave(repeat)
        tail = decoder(input_ids=ids[:, P:], attention_mask=attn, position_ids=p[:, P:], use_cache=True,
                       **cache_kwarg(decoder, cache))
        # the last prompt position predicts each completion's first token
        hidden = torch.cat([prompt.last_hidden_state[:, -1:].repeat_interleave(repeat, dim=0),
                            tail.last_hidden_state[:, :-1]], dim=1)
        logps.append(head_token_stats(head, hidden, ids[:, P:], temperature, with_entropy=False)[0])
        if keep_hidden:
            if kept is None:
                kept = hidden.new_empty((B, *hidden.shape[1:]))
            kept[rows] = hidden
        elif keep_logits:  # filled in place, a chunk of tokens at a time: one [B, T, V] tensor, nothing else
            if kept is None:
                kept = hidden.new_empty((B, hidden.shape[1], head(hidden[:1, :1]).shape[-1]), dtype=torch.float32)
            flat = hidden.reshape(-1, hidden.shape[-1])
            out = kept[rows].view(-1, kept.shape[-1])  # a view: whole rows are contiguous
            step = tokens_per_chunk(kept.shape[-1])
            for i in range(0, flat.shape[0], step):
                out[i:i + step] = head(flat[i:i + step]).float()
    return torch.cat(logps), kept
