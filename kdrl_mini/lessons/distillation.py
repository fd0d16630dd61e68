r"""On-policy distillation as two choices, on a policy small enough to enumerate (notebook 03c).

Token-level distillation minimises a divergence D between the student p_theta and the teacher q at
the next token, summed over the positions of a response. Two choices define it:

    whose prefixes:  y ~ p_theta (the student's own, on-policy), y ~ q (the teacher's), or a mix
                     lambda p_theta + (1 - lambda) q (GKD);
    which direction: forward KL(q || p_theta) (mass covering) or reverse KL(p_theta || q) (mode
                     seeking), or GKD's generalised Jensen-Shannon divergence in between.

    L(theta) = E_{y ~ w}[ \sum_t D(p_theta(.|y_{<t}), q(.|y_{<t})) ],   w = lambda sg[p_theta] + (1 - lambda) q

The prefix distribution is held fixed (stop-gradient), as in every trainer that samples first and
differentiates second. Four corners of the grid:

    teacher prefixes, forward   = SFT on teacher samples (exactly the sequence-level forward KL)
    student prefixes, forward   = on-policy forward KL (DAgger-like)
    teacher prefixes, reverse   = reverse KL on teacher prefixes
    student prefixes, reverse   = on-policy distillation (OPD): the per-token KL, k2 in the loss,
                                  or the 2025 recipe's per-token log-ratio advantage (no discount)

plus the sequence-level reverse KL (MiniLLM: its gradient adds the future part of notebook 03b) and
KDRL (the task reward plus beta times OPD). Every expectation is a sum over all V^T sequences, so
the training below is exact gradient descent: no sampling noise, one answer per objective.

The student is a *Markov* policy: its logits at step t depend on (t, previous token) only, so it
cannot represent a teacher whose continuation depends on earlier tokens. That capacity gap is what
makes the objectives end in different places. Shapes: Markov parameters [T, V + 1, V] (row V is
the start of the response), tables [P, V] as in :mod:`kdrl_mini.lessons.sequence_kl`. Float64.
"""

from __future__ import annotations

import math

import torch

from ..kl import exact_kl
from .sequence_kl import _grad, all_sequences, sequence_kl, step_logits, table_length, token_logprobs

DIRECTIONS = ("forward", "reverse", "jsd")


# ---------------------------------------------------------------- policies
def markov_rows(vocab: int, length: int) -> torch.Tensor:
    """For each row of a prefix table, the Markov parameter row it reads: [P] long.

    A prefix h of length t reads row t * (V + 1) + last(h), with last = V for the empty prefix."""
    rows = []
    for t in range(length):
        last = [vocab] if t == 0 else [code % vocab for code in range(vocab**t)]
        rows += [t * (vocab + 1) + v for v in last]
    return torch.tensor(rows, dtype=torch.long)


def markov_table(params: torch.Tensor) -> torch.Tensor:
    """The prefix table [P, V] of a Markov policy with parameters [T, V + 1, V] (differentiable)."""
    length, _, vocab = params.shape
    return params.reshape(length * (vocab + 1), vocab)[markov_rows(vocab, length)]


def random_markov(vocab: int, length: int, scale: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Markov parameters with logits ~ N(0, scale^2): [T, V + 1, V], float64."""
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(length, vocab + 1, vocab, generator=gen, dtype=torch.float64)


def table_from_sequence_probs(probs: torch.Tensor, vocab: int, length: int) -> torch.Tensor:
    r"""The prefix table whose policy gives sequence y probability probs[y] (y in the order of
    ``all_sequences``): row h holds \log P(h v) - \log P(h). Every prefix needs positive mass."""
    if probs.shape != (vocab**length,) or not bool((probs > 0).all()):
        raise ValueError(f"probs must be [V^T] = [{vocab**length}] and positive everywhere, got "
                         f"{tuple(probs.shape)}: mix in a little uniform mass")
    p = (probs / probs.sum()).double()
    rows = [p.reshape(vocab**t, vocab, -1).sum(-1) for t in range(length)]
    table = torch.cat([r.log() - r.sum(-1, keepdim=True).log() for r in rows])
    return table


def two_mode_teacher(vocab: int, length: int, modes, mass: float = 0.9):
    r"""A teacher that writes one of a few solutions: probability ``mass`` split equally over the
    sequences in ``modes``, the rest uniform over all V^T sequences.

    Returns (teacher table [P, V], reward [V^T]: 1 on the modes, 0 elsewhere)."""
    y = all_sequences(vocab, length)
    reward = torch.zeros(y.shape[0], dtype=torch.float64)
    for mode in modes:
        if len(mode) != length:
            raise ValueError(f"mode {mode} has {len(mode)} tokens; the policy writes {length}")
        reward[(y == torch.tensor(mode)).all(-1)] = 1.0
    probs = (1 - mass) / y.shape[0] + mass * reward / reward.sum()
    return table_from_sequence_probs(probs, vocab, length), reward


# ---------------------------------------------------------------- divergences and objectives
def token_divergence(logits: torch.Tensor, teacher_logits: torch.Tensor, direction: str,
                     jsd_beta: float = 0.5) -> torch.Tensor:
    r"""Divergence between the student's and the teacher's next-token distributions: [...] from [..., V].

        forward: KL(q || p)      reverse: KL(p || q)
        jsd:     \beta KL(q || m) + (1 - \beta) KL(p || m),   m = \beta q + (1 - \beta) p     (GKD's JSD(beta),
                 beta on the teacher: towards 0 it behaves like beta * forward KL, towards 1 like
                 (1 - beta) * reverse KL)

    The generalised JSD is 0 iff p = q and at most the binary entropy of beta; at beta = 0.5 it is
    the ordinary Jensen-Shannon divergence."""
    if direction in ("forward", "reverse"):
        return exact_kl(logits, teacher_logits, direction)
    if direction != "jsd":
        raise ValueError(f"unknown direction {direction!r}: choose one of {', '.join(DIRECTIONS)}")
    if not 0 < jsd_beta < 1:
        raise ValueError(f"jsd_beta must be in (0, 1), got {jsd_beta}: 0 and 1 make the divergence vanish")
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(teacher_logits, -1)
    log_m = torch.logaddexp(log_q + math.log(jsd_beta), log_p + math.log(1 - jsd_beta))
    kl = lambda log_a: (log_a.exp() * (log_a - log_m)).sum(-1)  # noqa: E731
    return jsd_beta * kl(log_q) + (1 - jsd_beta) * kl(log_p)


def prefix_weights(student: torch.Tensor, teacher: torch.Tensor, on_policy: float) -> torch.Tensor:
    r"""w(y) = \lambda sg[p_\theta(y)] + (1 - \lambda) q(y) for every sequence: [V^T], \lambda = ``on_policy``."""
    if not 0 <= on_policy <= 1:
        raise ValueError(f"on_policy is the share of student prefixes, in [0, 1]; got {on_policy}")
    y = all_sequences(student.shape[1], table_length(student))
    p = token_logprobs(student.detach(), y).sum(-1).exp()
    q = token_logprobs(teacher, y).sum(-1).exp()
    return on_policy * p + (1 - on_policy) * q


def token_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, direction: str,
                            on_policy: float, jsd_beta: float = 0.5) -> torch.Tensor:
    r"""The exact token-level objective L(\theta) = \sum_y w(y) \sum_t D(p(.|y_{<t}), q(.|y_{<t})). 0-dim.

    on_policy = 1: the student's own prefixes; 0: the teacher's; in between: GKD's mix."""
    y = all_sequences(student.shape[1], table_length(student))
    div = token_divergence(step_logits(student, y), step_logits(teacher, y), direction, jsd_beta)
    return (prefix_weights(student, teacher, on_policy) * div.sum(-1)).sum()


def forward_kl_grads(student: torch.Tensor, teacher: torch.Tensor):
    r"""Two forward-KL gradients, [P, V] each, to place k3 in the loss (notebook 03b):

        own:      \nabla \sum_y sg[p(y)] \sum_t KL(q(.|y_{<t}) || p_\theta(.|y_{<t}))   (student prefixes held fixed)
        sequence: \nabla KL(q || p_\theta) between whole responses               (= the teacher-prefix corner)"""
    own = _grad(lambda th: token_distillation_loss(th, teacher, "forward", 1.0), student)
    return own, _grad(lambda th: token_distillation_loss(th, teacher, "forward", 0.0), student)


def expected_reward(student: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    r"""E_{y ~ p_\theta}[r(y)], differentiable (its gradient is the exact policy gradient). 0-dim."""
    y = all_sequences(student.shape[1], table_length(student))
    return (token_logprobs(student, y).sum(-1).exp() * reward).sum()


def objective(name: str, beta: float = 0.05, mix: float = 0.5, jsd_beta: float = 0.5):
    r"""A loss (student_table, teacher_table, reward) -> 0-dim tensor to minimise, by name:

        "sft"            teacher prefixes, forward KL (= SFT on teacher samples)
        "onpolicy-fkl"   student prefixes, forward KL (DAgger-like)
        "teacher-rkl"    teacher prefixes, reverse KL
        "opd"            student prefixes, reverse KL (on-policy distillation; KD-RKL with k2)
        "sequence-rkl"   the sequence-level reverse KL, future part included (MiniLLM)
        "gkd"            a mix of student (share ``mix``) and teacher prefixes, JSD(``jsd_beta``)
        "kdrl"           -E[r] + beta * OPD (GRPO's reward plus the per-token reverse KL)"""
    token = lambda direction, lam: (lambda s, q, r: token_distillation_loss(s, q, direction, lam, jsd_beta))  # noqa: E731
    table = {
        "sft": token("forward", 0.0),
        "onpolicy-fkl": token("forward", 1.0),
        "teacher-rkl": token("reverse", 0.0),
        "opd": token("reverse", 1.0),
        "sequence-rkl": lambda s, q, r: sequence_kl(s, q),
        "gkd": token("jsd", mix),
        "kdrl": lambda s, q, r: -expected_reward(s, r) + beta * token_distillation_loss(s, q, "reverse", 1.0),
    }
    if name not in table:
        raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(table)}")
    return table[name]


OBJECTIVES = ("sft", "onpolicy-fkl", "teacher-rkl", "opd", "sequence-rkl", "gkd", "kdrl")
GRID = {("teacher", "forward"): "sft", ("student", "forward"): "onpolicy-fkl",
        ("teacher", "reverse"): "teacher-rkl", ("student", "reverse"): "opd"}


# ---------------------------------------------------------------- per-token advantage vs reward-to-go
def discounted_reward_to_go_loss(gamma: float):
    r"""KL in the reward per token with discount \gamma: a surrogate (student, teacher, y) -> [N],

        L(y) = \sum_t \log p(y_t|y_{<t}) sg[\sum_{s>=t} \gamma^{s-t} d_s].

    \gamma = 0 is the per-token advantage -d_t of on-policy distillation (the 2025 recipe, "no
    discounting" of later tokens means none of them count): k2's gradient, sample by sample, so the
    token part only (biased). \gamma = 1 is ``reward_to_go_loss`` (unbiased). In between: less bias
    than \gamma = 0, less variance than \gamma = 1."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")

    def loss(student, teacher, y):
        logp = token_logprobs(student, y)
        d = (logp - token_logprobs(teacher, y)).detach()
        length = d.shape[-1]
        lag = torch.arange(length).unsqueeze(0) - torch.arange(length).unsqueeze(1)   # s - t
        weights = torch.where(lag >= 0, float(gamma) ** lag.clamp(min=0).double(), torch.zeros((), dtype=d.dtype))
        return (logp * (d @ weights.T)).sum(-1)

    return loss


# ---------------------------------------------------------------- training and read-outs
def report(student: torch.Tensor, teacher: torch.Tensor, reward: torch.Tensor) -> dict:
    r"""Exact read-outs of a policy, as Python floats:

        accuracy   E_p[r(y)]                   (share of sampled responses that are solutions)
        entropy    H(p) = -E_p[\log p(y)]      (sequence entropy, nats)
        reverse_kl KL(p || q),  forward_kl KL(q || p)   (whole sequences)"""
    y = all_sequences(student.shape[1], table_length(student))
    with torch.no_grad():
        logp, logq = token_logprobs(student, y).sum(-1), token_logprobs(teacher, y).sum(-1)
        p, q = logp.exp(), logq.exp()
        return {"accuracy": float((p * reward).sum()), "entropy": float(-(p * logp).sum()),
                "reverse_kl": float((p * (logp - logq)).sum()), "forward_kl": float((q * (logq - logp)).sum())}


def train(params: torch.Tensor, teacher: torch.Tensor, reward: torch.Tensor, loss_fn, steps: int = 300,
          lr: float = 0.05, every: int = 10, table=markov_table) -> dict:
    r"""Exact gradient descent (Adam) on ``loss_fn(table(params), teacher, reward)`` from ``params``.

    ``table`` maps the parameters to a prefix table (``markov_table``; pass ``lambda x: x`` to train
    a full table). Returns {"params": the final parameters, "history": [{"step", **report}] every
    ``every`` steps and at the end}."""
    theta = params.detach().clone().double().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    history = []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            history.append({"step": step, **report(table(theta), teacher, reward)})
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(table(theta), teacher, reward).backward()
        opt.step()
    return {"params": theta.detach(), "history": history}
