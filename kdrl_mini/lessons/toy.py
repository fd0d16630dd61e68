"""Toy distributions for seeing KL behave: 1-D densities on a grid and small categoricals.

Everything is a categorical over a few (or a few hundred) outcomes given by its logits, so the
exact KL of :mod:`kdrl_mini.kl` applies directly. Used by the notebooks on forward vs reverse KL
and on the gradients of the sampled KL estimators. Pure torch.
"""

from __future__ import annotations

import torch

from ..kl import exact_kl, kl_estimate


def gaussian_logits(grid: torch.Tensor, mu, sigma) -> torch.Tensor:
    r"""Logits of a Gaussian discretised on ``grid``: z_j = -(x_j - \mu)^2 / (2\sigma^2).

    softmax(z) is the Gaussian density at the grid points, renormalised over the grid.
    ``mu`` and ``sigma`` may be tensors that require grad.
    """
    return -0.5 * ((grid - mu) / sigma) ** 2


def mixture_logits(grid: torch.Tensor, means, sigmas, weights) -> torch.Tensor:
    r"""Logits of a Gaussian mixture on ``grid``: z_j = \log \sum_c w_c N(x_j; m_c, s_c)
    (up to a constant, which softmax removes)."""
    means, sigmas, weights = (torch.as_tensor(v, dtype=grid.dtype) for v in (means, sigmas, weights))
    comp = gaussian_logits(grid.unsqueeze(-1), means, sigmas) - sigmas.log() + weights.log()
    return torch.logsumexp(comp, dim=-1)


def fit_gaussian(target_logits: torch.Tensor, grid: torch.Tensor, direction: str,
                 mu0: float = 0.5, sigma0: float = 1.0, steps: int = 500, lr: float = 0.05) -> dict:
    r"""Fit a discretised Gaussian p_{\mu,\sigma} to the target q by minimising one KL with Adam.

        direction="reverse": \min KL(p || q)   (mode seeking: p avoids where q is small)
        direction="forward": \min KL(q || p)   (mass covering: p must be > 0 wherever q is)

    \sigma is parametrised by its log so it stays positive. Returns ``mu``, ``sigma`` and ``kl``
    (floats, the fitted values and the final KL) and ``history`` (the KL at each step, before
    its update).
    """
    mu = torch.tensor(float(mu0), requires_grad=True)
    log_sigma = torch.tensor(float(sigma0), dtype=torch.float32).log().requires_grad_(True)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    history = []
    for _ in range(steps):
        kl = exact_kl(gaussian_logits(grid, mu, log_sigma.exp()), target_logits, direction)
        opt.zero_grad()
        kl.backward()
        opt.step()
        history.append(float(kl.detach()))
    with torch.no_grad():
        final = float(exact_kl(gaussian_logits(grid, mu, log_sigma.exp()), target_logits, direction))
    return {"mu": mu.item(), "sigma": log_sigma.exp().item(), "kl": final, "history": history}


def grid_moments(logits: torch.Tensor, grid: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the categorical softmax(logits) placed on ``grid``."""
    p = torch.softmax(logits, dim=-1)
    mean = (p * grid).sum()
    return float(mean), float((p * (grid - mean) ** 2).sum().sqrt())


def exact_kl_grad(logits: torch.Tensor, ref_logits: torch.Tensor, direction: str) -> torch.Tensor:
    r"""\nabla_z of the exact KL between softmax(z) and softmax(ref_logits), at z = ``logits`` ([V]).

    Computed in float64, like :func:`estimator_grad`, so the two compare to many digits."""
    z = logits.detach().double().requires_grad_(True)
    exact_kl(z, ref_logits.detach().double(), direction).backward()
    return z.grad


def estimator_grad(logits: torch.Tensor, ref_logits: torch.Tensor, kind: str, n: int,
                   seed: int = 0) -> torch.Tensor:
    r"""Mean gradient of a sampled KL estimate used as a loss, samples held fixed.

    Draws x_1..x_n ~ p = softmax(z) (seeded), then returns
        \nabla_z \frac{1}{n} \sum_i k(\log p_z(x_i) - \log q(x_i))
    with k = ``kind`` ("k1", "k2", "k3", see :func:`kdrl_mini.kl.kl_estimate`). The samples do
    not depend on z here, as in training, where the student's tokens are constants of the loss.
    Float64 throughout: a float32 mean over a million samples drifts by ~1e-3 with the summation
    order, which would blur the small differences being measured.
    """
    gen = torch.Generator().manual_seed(seed)
    z = logits.detach().double().requires_grad_(True)
    x = torch.multinomial(torch.softmax(z.detach(), -1), n, replacement=True, generator=gen)
    logp = torch.log_softmax(z, -1)[x]
    ref_logp = torch.log_softmax(ref_logits.detach().double(), -1)[x]
    kl_estimate(logp, ref_logp, kind).mean().backward()
    return z.grad
