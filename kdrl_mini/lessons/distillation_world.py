r"""The prefix x direction grid of :mod:`kdrl_mini.lessons.distillation` on the tiny world, briefly.

One step: sample G responses per prompt from the student (share ``on_policy`` of the loss) and/or
from the teacher, score both models' full next-token distributions on them, and minimise the exact
per-token divergence (forward or reverse KL, or GKD's JSD) averaged over response tokens:

    L = \lambda mean_{own prefixes} D_t + (1 - \lambda) mean_{teacher prefixes} D_t

The mix is the expectation of GKD's coin flip (student samples with probability \lambda). With
``on_policy=0`` and the forward KL this is KD on the teacher's full distribution (soft targets), the
SFT of KD-FKL with the sampled token replaced by its whole distribution. A teaching loop: the
trainer's algorithms (``kd-fkl``, ``kd-rkl``) cover the corners it ships.
"""

from __future__ import annotations

import torch

from ..rollout import greedy_eval, sample
from ..scoring import completion_logits
from .distillation import token_divergence


def _mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def divergence_on(student, teacher, tokenizer, prompts, sampler, direction: str, group_size: int,
                  max_new_tokens: int, jsd_beta: float = 0.5):
    """Mean per-token divergence (differentiable in the student) on ``sampler``'s responses, and
    the student's mean entropy there (detached). Returns (divergence, entropy) 0-dim tensors."""
    sampler.eval()
    batch = sample(sampler, tokenizer, prompts, group_size, max_new_tokens)
    student.train()
    logits = completion_logits(student, batch).float()
    with torch.no_grad():
        t_logits = completion_logits(teacher, batch).float()
    m = batch.completion_mask
    div = _mean(token_divergence(logits, t_logits, direction, jsd_beta), m)
    logp = torch.log_softmax(logits.detach(), -1)
    return div, _mean(-(logp.exp() * logp).sum(-1), m)


def distil(world, student, direction: str, on_policy: float, steps: int = 10, prompts_per_step: int = 4,
           group_size: int = 8, max_new_tokens: int = 48, lr: float = 3e-4, jsd_beta: float = 0.5,
           seed: int = 0) -> list[dict]:
    """Train ``student`` (trainable parameters, AdamW) for ``steps`` steps of the grid's objective.

    Returns one row per step: ``loss`` and the student's ``entropy`` on the prefixes trained on."""
    if not 0 <= on_policy <= 1:
        raise ValueError(f"on_policy is the share of student prefixes, in [0, 1]; got {on_policy}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rows = []
    for step in range(steps):
        idx = torch.randperm(len(world.train), generator=gen)[:prompts_per_step].tolist()
        prompts = [world.train[i]["prompt"] for i in idx]
        loss, ent = 0.0, []
        for share, sampler in ((on_policy, student), (1 - on_policy, world.teacher)):
            if share > 0:
                div, h = divergence_on(student, world.teacher, world.tokenizer, prompts, sampler, direction,
                                       group_size, max_new_tokens, jsd_beta)
                loss, ent = loss + share * div, ent + [float(h)]
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append({"step": step + 1, "loss": loss.item(), "entropy": sum(ent) / len(ent)})
    return rows


@torch.no_grad()
def measure(world, student, n_prompts: int = 16, group_size: int = 4, max_new_tokens: int = 48,
            eval_rows: int = 50, seed: int = 1) -> dict:
    """Greedy test accuracy on ``eval_rows`` rows; on the student's own samples of the first ``n_prompts``
    test prompts the exact reverse KL to the teacher and the student's entropy per token; on the
    teacher's samples of the same prompts the exact forward KL per token."""
    prompts = [r["prompt"] for r in world.test[:n_prompts]]
    out = {}
    for sampler, direction in ((student, "reverse"), (world.teacher, "forward")):
        torch.manual_seed(seed)
        div, ent = divergence_on(student, world.teacher, world.tokenizer, prompts, sampler, direction,
                                 group_size, max_new_tokens)
        out[f"{direction}_kl"] = float(div)
        out.setdefault("entropy", float(ent))
    student.eval()
    greedy = greedy_eval(student, world.tokenizer, world.test[:eval_rows])
    return {"accuracy": greedy["accuracy"], "length": greedy["mean_length"], **out}
