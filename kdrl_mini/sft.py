"""Supervised fine-tuning on given completions: forward KL on teacher samples (KD-FKL's loss, the
negative log-likelihood of the completion tokens) minimised with a warm-up + cosine learning rate.

The tiny world's build (:mod:`kdrl_mini.world.build`) and the real pair's heal
(:mod:`kdrl_mini.real.heal`) both train through :func:`fit`.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from .batch import Batch
from .losses import forward_kl_loss
from .scoring import token_logprobs


def sft_loss(model, batch: Batch) -> torch.Tensor:
    r"""Token-mean negative log-likelihood of ``batch``'s completion tokens (EOS included):
    L = -\sum_{i,t} m_{it} \log\pi_\theta(y_{it}) / \sum_{i,t} m_{it}  (:func:`~kdrl_mini.losses.forward_kl_loss`)."""
    return forward_kl_loss(token_logprobs(model, batch), batch.completion_mask)[0]


def fit(model, optimizer, batch_at: Callable[[int], Batch], steps: int, lr_at: Callable[[int], float],
        max_grad_norm: float = 1.0, check=None, eval_every: int = 0, desc: str = "SFT",
        progress: bool = True) -> tuple[list[float], list[dict]]:
    """``steps`` optimiser steps of :func:`sft_loss` on ``batch_at(step)`` at learning rate ``lr_at(step)``.

    Every ``eval_every`` steps ``check(model)`` returns ``(metrics, stop)``; training ends at the
    first check that says stop. A non-finite loss stops with FloatingPointError. Returns (the loss
    of every step, the log of the checks); the model is left in eval mode.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses, evals = [], []
    model.train()
    for step in tqdm(range(steps), desc=desc, disable=not progress, unit="step", mininterval=30, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = sft_loss(model, batch_at(step))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc} step {step + 1}: the SFT loss is {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        if check is not None and eval_every and (step + 1) % eval_every == 0:
            metrics, stop = check(model)
            evals.append({"step": step + 1, "loss": round(losses[-1], 4), **metrics})
            print(f"[{desc}] step {step + 1}: loss {losses[-1]:.4f} {metrics}", flush=True)
            model.train()
            if stop:
                break
    model.eval()
    return losses, evals
