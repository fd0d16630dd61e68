r"""Hinton's soft targets: the forward KL at a temperature, and why it is multiplied by T^2 (notebook 02).

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015): the student z
matches the teacher v through their softened distributions p_T = softmax(z / T), q_T = softmax(v / T),

    L_T(z) = T^2 \cdot KL(q_T || p_T),        \partial KL(q_T || p_T) / \partial z_i = (p_{T,i} - q_{T,i}) / T.

For large T, p_{T,i} \approx (1 + z_i / T) / V, so with zero-mean logits the gradient of the KL is about
(z_i - v_i) / (V T^2): it shrinks like 1 / T^2, hence the factor T^2, which keeps the soft-target
gradient on the same scale whatever the temperature. In that limit the scaled gradient is
(z_i - v_i) / V: distillation becomes matching the logits. Shapes: logits [..., V]; losses summed
over the batch dimensions. Pure torch.
"""

from __future__ import annotations

import torch

from ..kl import exact_kl


def soft_target_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     scale: bool = True) -> torch.Tensor:
    r"""T^2 \cdot KL(softmax(v / T) || softmax(z / T)) summed over rows (``scale=False``: without T^2)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (got {temperature}); T = 1 is plain forward-KL distillation")
    kl = exact_kl(logits / temperature, teacher_logits.detach() / temperature, "forward").sum()
    return kl * temperature ** 2 if scale else kl


def temperature_gradient(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                         scale: bool = True) -> torch.Tensor:
    r"""\nabla_z of :func:`soft_target_loss` at z = ``logits``, in float64: [..., V]."""
    z = logits.detach().double().requires_grad_(True)
    soft_target_loss(z, teacher_logits.double(), temperature, scale).backward()
    return z.grad


def logit_matching_gradient(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""The high-temperature limit of the scaled gradient: (z - \bar z) - (v - \bar v), divided by V: [..., V]."""
    z, v = logits.double(), teacher_logits.double()
    centred = (z - z.mean(-1, keepdim=True)) - (v - v.mean(-1, keepdim=True))
    return centred / z.shape[-1]
