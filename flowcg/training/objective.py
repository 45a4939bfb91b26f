"""Reverse-KL objective: KL(q‖p_β) = E_q[log q(x) + β u(x)] + log Z_β, minimised over q.

The minibatch estimate uses reparameterised draws x = T(z), so gradients flow through x into
the energy. Tempered energies βu far above the relevant range are softened by a lin-log cut
before they enter the loss (they would otherwise dominate the gradient): above ``linear_until``
(in units of the current kT/β) βu ↦ c + log(1 + βu − c), and the result is clamped at
``clamp_max``. The cut acts on βu, not u: at small β the relevant energies u are large, and a
cut on u would let the flow expand without bound for a merely logarithmic energy cost. Samples whose energy
is NaN or +inf are dropped from the loss and counted; the importance weights elsewhere use the
raw energies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowcg.flows.model import StructuredFlow
from flowcg.targets.base import Target


def lin_log_cut(u: Tensor, linear_until: float = 1e3, clamp_max: float = 1e9) -> Tensor:
    """Soften energies above ``linear_until``: u_c + log(1 + u − u_c), then clamp at ``clamp_max``."""
    excess = (u - linear_until).clamp(min=0.0)
    return torch.where(u > linear_until, linear_until + torch.log1p(excess), u).clamp(max=clamp_max)


@dataclass
class ReverseKLEstimate:
    """One minibatch of the objective.

    Attributes:
        loss: Σ_i a_i (log q(x_i) + cut(β u(x_i))) over finite-energy samples, with sample
            weights a_i renormalised over them; differentiable.
        energies_kT: raw reduced energies u(x_i), detached, shape (B,).
        log_q: log q(x_i), detached, shape (B,).
        n_nonfinite: number of samples whose energy was NaN or ±inf.
    """

    loss: Tensor
    energies_kT: Tensor
    log_q: Tensor
    n_nonfinite: int


def reverse_kl(model: StructuredFlow, target: Target, beta: float, batch_size: int, linear_until: float = 1e3, clamp_max: float = 1e9) -> ReverseKLEstimate:
    """Minibatch estimate of E_q[log q + β u] from ``batch_size`` reparameterised draws."""
    draw = model.rsample(batch_size)
    u = target.energy(draw.x)
    finite = torch.isfinite(u) & torch.isfinite(draw.log_q)
    n_nonfinite = int((~finite).sum())  # Target.energy already gives these samples zero gradient
    if n_nonfinite == batch_size:
        loss = torch.full((), float("nan"), device=u.device, dtype=u.dtype)
    else:
        a = draw.sample_weights[finite]
        per_sample = draw.log_q[finite] + lin_log_cut(beta * u[finite], linear_until, clamp_max)
        loss = (a * per_sample).sum() / a.sum()
    return ReverseKLEstimate(loss=loss, energies_kT=u.detach(), log_q=draw.log_q.detach(), n_nonfinite=n_nonfinite)
