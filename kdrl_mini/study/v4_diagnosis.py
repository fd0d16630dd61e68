"""Which tokens carry the reverse KL the KD-RKL arms minimise, and what the student samples there.

The tiny world's tokens are characters, so each response token has a kind read off its text:
``result`` (a digit after ``=``: the arithmetic the model does), ``operand`` (a digit copied from the
prompt or the previous line), ``answer`` (a digit after ``####``), ``structure`` (operators, ``=``,
newlines, ``check``, EOS). On the student's own samples (the prefixes on-policy KD trains on) the
exact per-token KL(student || teacher) is summed per kind, and the teacher's own choice is compared
with the token the student sampled.
"""

from __future__ import annotations

import torch

from ..rewards import batch_rewards
from ..rollout import format_prompts, sample
from ..scoring import completion_hidden, student_token_stats

KINDS = ("result", "operand", "answer", "structure")


def token_kinds(text_tokens: list[str]) -> list[str]:
    """The kind of each character token of one response (see the module docstring)."""
    kinds, context = [], "\n"  # the last character before the current number that is not a digit or a space
    for tok in text_tokens:
        if tok.isdigit():
            kinds.append({"#": "answer", "=": "result"}.get(context, "operand"))
        else:
            kinds.append("structure")
            context = context if tok == " " else tok
    return kinds


@torch.no_grad()
def kl_by_token_kind(student, teacher, tokenizer, rows: list[dict], max_new_tokens: int, temperature: float,
                     samples: int = 4) -> dict[str, dict]:
    """Per kind: its share of response tokens, its share of the summed KL, the mean KL per token, and how
    often the teacher's most likely token is the one the student sampled (``teacher_agrees``); under
    ``"samples"`` the share of the student's samples that are correct and that are cut off by the budget."""
    prompts = format_prompts(tokenizer, [r["prompt"] for r in rows], False)
    batch = sample(student, tokenizer, prompts, samples, max_new_tokens, temperature)
    hidden = completion_hidden(teacher, batch)
    _, _, kl, _ = student_token_stats(student, batch, 1.0, teacher, hidden)
    teacher_top = teacher.get_output_embeddings()(hidden).argmax(-1)
    ids, mask = batch.completion_ids, batch.completion_mask.bool()
    totals = {k: {"tokens": 0, "kl": 0.0, "agree": 0} for k in KINDS}
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        for kind, k, agree in zip(token_kinds(tokenizer.convert_ids_to_tokens(ids[i, :n].tolist())),
                                  kl[i, :n].tolist(), (teacher_top[i, :n] == ids[i, :n]).tolist()):
            totals[kind]["tokens"] += 1
            totals[kind]["kl"] += k
            totals[kind]["agree"] += agree
    correct = batch_rewards(batch.texts, [r["answer"] for r in rows for _ in range(samples)])
    seen = {"correct": float(correct.mean()), "truncated": float(batch.truncated.float().mean())}
    all_tokens = sum(t["tokens"] for t in totals.values())
    all_kl = sum(t["kl"] for t in totals.values())
    return {kind: {"token_share": t["tokens"] / max(all_tokens, 1), "kl_share": t["kl"] / max(all_kl, 1e-12),
                   "mean_kl": t["kl"] / max(t["tokens"], 1), "teacher_agrees": t["agree"] / max(t["tokens"], 1)}
            for kind, t in totals.items()} | {"samples": seen}
