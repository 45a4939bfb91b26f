"""Training objectives: reverse KL, and an importance-weighted forward KL mixed into it.

Reverse KL: KL(q‖p_β) = E_q[log q(x) + β u(x)] + log Z_β, minimised over q.

The minibatch estimate uses reparameterised draws x = T(z), so gradients flow through x into
the energy. Tempered energies βu far above the relevant range are softened by a lin-log cut
before they enter the loss (they would otherwise dominate the gradient): above ``linear_until``
(in units of the current kT/β) βu ↦ c + log(1 + βu − c), and the result is clamped at
``clamp_max``. The cut acts on βu, not u: at small β the relevant energies u are large, and a
cut on u would let the flow expand without bound for a merely logarithmic energy cost. Samples whose energy
is NaN or +inf are dropped from the loss and counted; the importance weights elsewhere use the
raw energies.

Uniform slow proposal (``slow_uniform_fraction`` f > 0, periodic slow latents that the couplings
do not move). Reverse KL places samples by q's own mass, so the conditional q(x | s) of a slow
state s that q rarely visits (alanine dipeptide's αL, ≈ 0.2 %) is hardly trained, and its
importance weights stay wild. A fraction f of each batch therefore draws s uniformly on the torus
and x ~ q(x | s), and those draws enter the *conditional* reverse KL

    E_{s ~ U} E_{q(x|s)} [log q(x | s) + β u(x)] = E_{s ~ U} [KL(q(·|s) ‖ p_β(·|s)) − log p_β(s)],  log q(x | s) = log q(x) − log π(s),

whose minimiser over the conditional is p_β(x | s) for every s, whatever the proposal over s
(the −log p_β(s) term does not depend on q). It trains no slow-prior parameter: π(s) is the
business of the reverse-KL part (weight 1 − f) and of the prior refit. This is the conditional
training of the coarse-graining-AL flows, here as a defensive share of an ordinary batch.

Importance-weighted forward KL (``forward_kl_weight`` λ > 0). Reverse KL is mode-seeking: where q
is too light, the samples that would show it are rare, so the heavy right tail of the importance
weights w = p_β/q (what caps the Kish ESS) is hardly trained. The forward KL KL(p_β‖q) =
−E_p[log q] + const is mass-covering and penalises exactly that. Without data, E_p is estimated by
self-normalised importance sampling on the flow's own draws (detached):

    KL(p_β‖q) ≈ −Σ_i w̄_i log q(x_i) + const,   x_i ~ q,   w̄_i = w_i / Σ_j w_j,

with gradients through log q(x_i) at fixed x_i (the flow's inverse pass). This is the β = 1 limit of
the reweighted forward KL that TA-BG anneals (Schopmans & Friederich 2025) and the "reverse KL +
forward KL" mixture of Boltzmann generators (Noé et al. 2019), without a buffer: it is only sound
where the weights are already tame (Kish ESS of a few tens of percent), i.e. as a late phase. The
loss is (1 − λ) · reverse KL + λ · forward KL; λ = 1 skips the reverse-KL draws and energy gradients.
With a :class:`~flowcg.training.buffer.ReweightedBuffer` the forward KL's minibatch is resampled
from the buffer instead of drawn and evaluated afresh (TA-BG's annealing; see that module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowcg.flows.model import StructuredFlow
from flowcg.targets.base import Target
from flowcg.training.buffer import ReweightedBuffer


def lin_log_cut(u: Tensor, linear_until: float = 1e3, clamp_max: float = 1e9) -> Tensor:
    """Soften energies above ``linear_until``: u_c + log(1 + u − u_c), then clamp at ``clamp_max``."""
    excess = (u - linear_until).clamp(min=0.0)
    return torch.where(u > linear_until, linear_until + torch.log1p(excess), u).clamp(max=clamp_max)


@dataclass
class KLEstimate:
    """One minibatch of an objective.

    Attributes:
        loss: the differentiable estimate; for reverse KL Σ_i a_i (log q(x_i) + cut(β u(x_i))) over
            finite-energy samples with sample weights a_i renormalised over them, for forward KL
            −Σ_i w̄_i log q(x_i).
        energies_kT: raw reduced energies u(x_i), detached, shape (B,).
        log_q: log q(x_i), detached, shape (B,).
        n_nonfinite: number of samples whose energy was NaN or ±inf.
    """

    loss: Tensor
    energies_kT: Tensor
    log_q: Tensor
    n_nonfinite: int


def _weighted_mean(a: Tensor, log_density: Tensor, u_kT: Tensor, beta: float, linear_until: float, clamp_max: float) -> tuple[Tensor, int]:
    """Σ a (log density + cut(β u)) / Σ a over finite samples, and the count of non-finite ones (NaN loss if none is finite)."""
    finite = torch.isfinite(u_kT) & torch.isfinite(log_density)
    if not finite.any():
        return torch.full((), float("nan"), device=u_kT.device, dtype=u_kT.dtype), int(finite.numel())
    a = a[finite]
    per_sample = log_density[finite] + lin_log_cut(beta * u_kT[finite], linear_until, clamp_max)
    return (a * per_sample).sum() / a.sum(), int((~finite).sum())


def reverse_kl(model: StructuredFlow, target: Target, beta: float, batch_size: int, linear_until: float = 1e3, clamp_max: float = 1e9,
               slow_uniform_fraction: float = 0.0) -> KLEstimate:
    """Minibatch estimate of E_q[log q + β u] from ``batch_size`` reparameterised draws, a share
    ``slow_uniform_fraction`` of them conditional draws on a uniform slow state (module docstring)."""
    n_uniform = round(slow_uniform_fraction * batch_size)
    n_joint = batch_size - n_uniform
    z, sample_weights = model.latent.rsample_stratified(n_joint)
    if n_uniform:
        z = torch.cat([z, model.latent.rsample_given_slow(model.latent.uniform_slow(n_uniform))])
    x, log_q_all = model.push(z)  # one push and one energy call for the whole batch: fixed shapes
    u_all = target.energy(x)
    u, log_q = u_all[:n_joint], log_q_all[:n_joint]
    loss, n_nonfinite = _weighted_mean(sample_weights, log_q, u, beta, linear_until, clamp_max)
    if n_uniform:
        log_q_given_slow = log_q_all[n_joint:] - model.latent.slow.log_prob(z[n_joint:, : model.slow_dim])
        uniform_weights = torch.full((n_uniform,), 1.0 / n_uniform, device=z.device, dtype=z.dtype)
        cond, n_cond = _weighted_mean(uniform_weights, log_q_given_slow, u_all[n_joint:], beta, linear_until, clamp_max)
        loss, n_nonfinite = (1.0 - slow_uniform_fraction) * loss + slow_uniform_fraction * cond, n_nonfinite + n_cond
    return KLEstimate(loss=loss, energies_kT=u.detach(), log_q=log_q.detach(), n_nonfinite=n_nonfinite)


def reweighted_forward_kl(model: StructuredFlow, target: Target, beta: float, batch_size: int) -> KLEstimate:
    """−Σ w̄_i log q(x_i) over ``batch_size`` detached draws x_i ~ q, w̄ the self-normalised weights
    of p_β/q (module docstring). Draws with a non-finite weight get w̄ = 0 and keep the batch's
    shape (compiled kernels see one size); NaN loss if no weight is finite."""
    with torch.no_grad():
        draw = model.sample(batch_size)
        u = target.energy(draw.x)
        log_w = -beta * u - draw.log_q
        finite = torch.isfinite(log_w)
        weights = torch.softmax(log_w.masked_fill(~finite, -torch.inf), dim=0)
    log_q = model.log_prob(draw.x)
    loss = -torch.where(finite, weights * log_q, torch.zeros_like(log_q)).sum()
    if not finite.any():
        loss = torch.full((), float("nan"), device=u.device, dtype=u.dtype)
    return KLEstimate(loss=loss, energies_kT=u, log_q=log_q.detach(), n_nonfinite=int((~finite).sum()))


def buffered_forward_kl(model: StructuredFlow, buffer: ReweightedBuffer, batch_size: int) -> KLEstimate:
    """−(1/b) Σ log q(x_j) over ``batch_size`` configurations resampled from ``buffer`` ∝ its
    weights (no energy evaluation; :mod:`flowcg.training.buffer`). ``energies_kT`` is empty."""
    log_q = model.log_prob(buffer.minibatch(batch_size))
    return KLEstimate(loss=-log_q.mean(), energies_kT=log_q.new_empty(0), log_q=log_q.detach(), n_nonfinite=0)


def kl_objective(model: StructuredFlow, target: Target, beta: float, batch_size: int, forward_kl_weight: float = 0.0,
                 slow_uniform_fraction: float = 0.0, linear_until: float = 1e3, clamp_max: float = 1e9,
                 buffer: ReweightedBuffer | None = None) -> KLEstimate:
    """(1 − λ) · reverse KL + λ · reweighted forward KL, λ = ``forward_kl_weight``, each on its own
    ``batch_size`` draws (the forward KL's resampled from ``buffer`` if given); a term whose weight
    is 0 is not computed. The returned energies and log q are the reverse-KL batch's when there is one."""
    if forward_kl_weight <= 0.0:
        return reverse_kl(model, target, beta, batch_size, linear_until, clamp_max, slow_uniform_fraction)
    if buffer is not None and buffer.beta != beta:
        raise ValueError(f"the buffer's weights target beta={buffer.beta:.4g}, the objective beta={beta:.4g}")
    forward = buffered_forward_kl(model, buffer, batch_size) if buffer is not None else reweighted_forward_kl(model, target, beta, batch_size)
    if forward_kl_weight >= 1.0:
        return forward
    reverse = reverse_kl(model, target, beta, batch_size, linear_until, clamp_max, slow_uniform_fraction)
    return KLEstimate(loss=(1.0 - forward_kl_weight) * reverse.loss + forward_kl_weight * forward.loss, energies_kT=reverse.energies_kT,
                      log_q=reverse.log_q, n_nonfinite=reverse.n_nonfinite + forward.n_nonfinite)
