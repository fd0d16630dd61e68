"""Sampling completions and scoring tokens: the bridge between models and the pure losses.

Conventions: a batch of ``B`` sequences is ``[prompt | completion]`` with prompts left-padded
to a common length ``P``; completions ``[B, T]`` hold the generated tokens; ``mask [B, T]`` is 1
for completion tokens up to and including the first EOS, 0 after it. Positions are counted from
each sequence's first real token, so left padding never shifts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rewards import batch_rewards


@dataclass
class Batch:
    """One rollout: ``B = len(prompts) * group_size`` sequences, groups contiguous.

    input_ids, attention_mask: [B, P + T]; completion_mask: [B, T]; prompt_len: P.
    texts: decoded completions (special tokens removed), length B.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int
    texts: list[str]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]


def format_prompts(tokenizer, prompts: list[str], chat_template: bool) -> list[str]:
    """Wrap each prompt as a user turn of the tokenizer's chat template (instruct models)."""
    if not chat_template:
        return list(prompts)
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


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """[B, T] mask: 1 up to and including the first EOS (or everything if no EOS)."""
    is_eos = completion_ids == eos_id
    # A token is kept while no EOS appeared strictly before it.
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    mask = (before == 0).float()
    if pad_id != eos_id:
        mask = mask * (completion_ids != pad_id).float()
    return mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] positions counted from each row's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], group_size: int = 1, max_new_tokens: int = 64,
           temperature: float = 1.0, greedy: bool = False) -> Batch:
    """Generate ``group_size`` completions per prompt (KV cache via ``generate``)."""
    device = next(model.parameters()).device
    ids, attn = encode_prompts(tokenizer, prompts, device)
    ids = ids.repeat_interleave(group_size, dim=0)
    attn = attn.repeat_interleave(group_size, dim=0)
    out = model.generate(
        input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
        do_sample=not greedy, temperature=temperature if not greedy else None,
        top_k=0 if not greedy else None, top_p=1.0 if not greedy else None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    P = ids.shape[1]
    completion = out[:, P:]
    mask = completion_mask_from_ids(completion, tokenizer.eos_token_id, tokenizer.pad_token_id)
    full_attn = torch.cat([attn, mask.long()], dim=1)
    texts = tokenizer.batch_decode(completion * mask.long() + tokenizer.pad_token_id * (1 - mask.long()),
                                   skip_special_tokens=True)
    return Batch(out, full_attn, mask, P, texts)


def token_logprobs(model, batch: Batch, return_logits: bool = False, temperature: float = 1.0):
    """Log-probs of the completion tokens under ``model``.

    logp[b, t] = log softmax(z_{b, P+t-1} / temperature)[y_{b, P+t}]   -> [B, T]
    With ``return_logits`` also the completion positions' logits [B, T, V] (for exact KL).
    Gradients flow when called outside ``torch.no_grad``.
    """
    pos = position_ids_from_mask(batch.attention_mask)
    P = batch.prompt_len
    # Only the positions that predict completion tokens need the (vocabulary-sized) head.
    keep = batch.input_ids.shape[1] - P + 1
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                logits_to_keep=keep)
    logits = out.logits[:, :-1, :].float() / temperature
    targets = batch.input_ids[:, P:]
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp, logits) if return_logits else logp


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
                 mask, ids.shape[1], list(completions))


@torch.no_grad()
def greedy_eval(model, tokenizer, rows: list[dict], max_new_tokens: int = 64, batch_size: int = 100,
                chat_template: bool = False) -> dict:
    """Greedy-decoding accuracy and mean completion length (tokens, EOS included) on ``rows``."""
    model.eval()
    correct, lengths, texts = [], [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        prompts = format_prompts(tokenizer, [r["prompt"] for r in chunk], chat_template)
        b = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True)
        correct += batch_rewards(b.texts, [r["answer"] for r in chunk]).tolist()
        lengths += b.completion_mask.sum(1).tolist()
        texts += b.texts
    return {"accuracy": sum(correct) / len(correct), "mean_length": sum(lengths) / len(lengths),
            "n": len(rows), "samples": texts[:3]}
