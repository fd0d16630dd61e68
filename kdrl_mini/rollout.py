"""Sampling completions: prompts in, a :class:`~kdrl_mini.batch.Batch` of token ids, masks and texts out.

Positions are counted from each sequence's first real token, so left padding never shifts them
(:mod:`kdrl_mini.batch` has the layout). Scoring a batch (token log-probs) lives in
:mod:`kdrl_mini.scoring`.
"""

from __future__ import annotations

import torch

from .batch import Batch
from .rewards import batch_rewards

EVAL_BATCH = 100  # prompts per generate call in greedy evaluation


def format_prompts(tokenizer, prompts: list[str], chat_template: bool, suffix: str = "") -> list[str]:
    """Append ``suffix`` verbatim to each prompt (an instruction such as "\\nPut your final answer
    in \\boxed{}."; it carries its own separator), then, if ``chat_template``, wrap each as a user
    turn of the tokenizer's chat template (instruct models)."""
    prompts = [p + suffix for p in prompts]
    if not chat_template:
        return prompts
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but this tokenizer has no chat template; "
                         "set chat_template: false for base models")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask, both [N, P].

    Text that already starts with the tokenizer's BOS (e.g. from a chat template) is not given
    a second one.
    """
    tokenizer.padding_side = "left"
    bos = tokenizer.bos_token
    has_bos = bool(bos) and all(p.startswith(bos) for p in prompts)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not has_bos)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation EOS ids
    (instruct models often have several, e.g. ``<|im_end|>`` and ``<|endoftext|>``)."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen) if isinstance(gen, (list, tuple)) else {gen}
    return sorted(i for i in ids if i is not None)


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_id, pad_id: int) -> torch.Tensor:
    """[B, T] mask: 1 up to and including the first EOS (or everything if no EOS).

    ``eos_id`` is one id or a list of ids."""
    eos = torch.as_tensor(eos_id if isinstance(eos_id, (list, tuple)) else [eos_id], device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos).int()
    before = torch.cumsum(is_eos, dim=1) - is_eos  # a token is kept while no EOS came strictly before it
    mask = (before == 0).float()
    if pad_id not in eos.tolist():
        mask = mask * (completion_ids != pad_id).float()
    return mask


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], group_size: int = 1, max_new_tokens: int = 64,
           temperature: float = 1.0, greedy: bool = False) -> Batch:
    """Generate ``group_size`` completions per prompt (KV cache via ``generate``).

    The sampled policy is exactly softmax(logits / temperature): every other logits processor a
    model may ship in its generation config (repetition penalty, top-k/top-p, n-gram bans) is
    switched off, so the log-probs the losses use are those of the distribution sampled from.
    """
    device = next(model.parameters()).device
    ids, attn = encode_prompts(tokenizer, prompts, device)
    ids = ids.repeat_interleave(group_size, dim=0)
    attn = attn.repeat_interleave(group_size, dim=0)
    eos = eos_token_ids(model, tokenizer)
    out = model.generate(
        input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
        do_sample=not greedy, temperature=None if greedy else temperature, top_k=None if greedy else 0,
        top_p=None if greedy else 1.0, min_p=None, typical_p=1.0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
    )
    P = ids.shape[1]
    completion = out[:, P:]
    mask = completion_mask_from_ids(completion, eos, tokenizer.pad_token_id)
    ended = torch.isin(completion, torch.as_tensor(eos, device=device)).any(dim=1)
    full_attn = torch.cat([attn, mask.long()], dim=1)
    texts = tokenizer.batch_decode(completion.masked_fill(mask == 0, tokenizer.pad_token_id), skip_special_tokens=True)
    return Batch(out, full_attn, mask, P, texts, truncated=~ended)


def teacher_forced_batch(tokenizer, prompts: list[str], completions: list[str], device) -> Batch:
    """A :class:`Batch` of given completions (e.g. teacher solutions for SFT), EOS appended."""
    ids, attn = encode_prompts(tokenizer, prompts, device)
    comp = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
    T = max(len(c) for c in comp)
    comp_ids = torch.full((len(comp), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(comp), T)
    for i, c in enumerate(comp):
        comp_ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = 1.0
    comp_ids, mask = comp_ids.to(device), mask.to(device)
    return Batch(torch.cat([ids, comp_ids], dim=1), torch.cat([attn, mask.long()], dim=1),
                 mask, ids.shape[1], list(completions), truncated=torch.zeros(len(comp), dtype=torch.bool, device=device))


@torch.no_grad()
def greedy_eval(model, tokenizer, rows: list[dict], max_new_tokens: int = 64, batch_size: int = EVAL_BATCH,
                chat_template: bool = False, suffix: str = "", checker: str = "strict") -> dict:
    """Greedy-decoding accuracy, mean completion length (tokens, EOS included) and the share of
    answers cut off by the budget, on ``rows`` (prompts get ``suffix``; answers are checked by
    ``checker``, see :func:`kdrl_mini.rewards.correctness`)."""
    return greedy_eval_budgets(model, tokenizer, rows, (max_new_tokens,), batch_size, chat_template, suffix,
                               checker)[max_new_tokens]


@torch.no_grad()
def greedy_eval_budgets(model, tokenizer, rows: list[dict], budgets, batch_size: int = EVAL_BATCH,
                        chat_template: bool = False, suffix: str = "", checker: str = "strict") -> dict[int, dict]:
    """:func:`greedy_eval` at several budgets from one decode at the largest: a greedy answer does not
    depend on the budget until it is cut, so the answer at budget b is the longest decode's first b
    tokens (ended where an EOS came within them, else cut off). Returns {budget: result}."""
    model.eval()
    eos, top = eos_token_ids(model, tokenizer), max(budgets)
    acc = {b: {"correct": [], "lengths": [], "cut": [], "texts": []} for b in budgets}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        prompts = format_prompts(tokenizer, [r["prompt"] for r in chunk], chat_template, suffix)
        full = sample(model, tokenizer, prompts, max_new_tokens=top, greedy=True)
        for b in budgets:
            ids, mask = full.completion_ids[:, :b], full.completion_mask[:, :b]
            texts = full.texts if b == top else tokenizer.batch_decode(
                ids.masked_fill(mask == 0, tokenizer.pad_token_id), skip_special_tokens=True)
            ended = torch.isin(ids, torch.as_tensor(eos, device=ids.device)).any(dim=1)
            a = acc[b]
            a["correct"] += batch_rewards(texts, [r["answer"] for r in chunk], checker=checker).tolist()
            a["lengths"] += mask.sum(1).tolist()
            a["cut"] += (~ended).float().tolist()
            a["texts"] += texts
    n = max(len(rows), 1)
    return {b: {"accuracy": sum(a["correct"]) / n, "mean_length": sum(a["lengths"]) / n, "truncated": sum(a["cut"]) / n,
                "n": len(rows), "samples": a["texts"][:3]} for b, a in acc.items()}


@torch.no_grad()
def sampled_eval(model, tokenizer, rows: list[dict], samples: int = 8, max_new_tokens: int = 64,
                 temperature: float = 1.0, batch_prompts: int = 16, chat_template: bool = False, suffix: str = "",
                 checker: str = "strict", keep_texts: bool = False) -> dict:
    """Accuracy of sampled answers: ``samples`` completions per row at ``temperature``.

    Returns ``per_sample`` (mean reward over all completions: the quantity a policy-gradient run
    raises), ``pass@{samples}`` (share of rows with at least one right completion), ``per_row``
    (each row's mean, in order, for paired before/after comparisons), ``n`` (rows) and, with
    ``keep_texts``, ``texts`` (every completion, row by row). Seed the global generator first
    (``torch.manual_seed``) for repeatable numbers.
    """
    model.eval()
    per_row, texts = [], []
    for i in range(0, len(rows), batch_prompts):
        chunk = rows[i:i + batch_prompts]
        prompts = format_prompts(tokenizer, [r["prompt"] for r in chunk], chat_template, suffix)
        b = sample(model, tokenizer, prompts, group_size=samples, max_new_tokens=max_new_tokens,
                   temperature=temperature)
        r = batch_rewards(b.texts, [row["answer"] for row in chunk for _ in range(samples)], checker=checker)
        per_row += r.view(len(chunk), samples).mean(1).tolist()
        texts += b.texts
    n = max(len(rows), 1)
    out = {"per_sample": sum(per_row) / n, f"pass@{samples}": sum(p > 0 for p in per_row) / n,
           "per_row": per_row, "n": len(rows)}
    return {**out, "texts": texts} if keep_texts else out
