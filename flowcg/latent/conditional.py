"""Densities for the fast latent variables given the slow ones, p(z_fast | z_slow).

* :class:`ConditionalDiagonalGaussian`: N(z_f; m(z_s), diag s(z_s)²) with
  m(z_s) = A z_s + MLP_m(z_s) and log s(z_s) = c + MLP_s(z_s). The linear term A lets the fast
  block follow the slow one exactly when the relation is linear (as in the slow/fast mixture);
  the MLP heads start at zero, so training starts from N(0, I).
* :class:`StandardNormal`: N(0, I) independent of z_s (the plain option).

Both take z_slow of shape (B, ds) and return / score z_fast of shape (B, df); df may be 0.

Cauchy latents for the circle (``cauchy_mask``). A fast latent that the flow maps onto a circle by
τ = 2 atan(z) (:class:`~flowcg.flows.circular.CircleEmbedding`, a rotor torsion) has, from a
Gaussian, a density that vanishes at the image of the seam τ = ±π: N(z) decays faster than the
embedding's Jacobian (1 + z²)/2 grows. The couplings' circle diffeomorphisms move that zero but
cannot remove it, so q has a zero on every rotor circle, and wherever the force field puts some
mass there (a methyl rotor's barrier) the importance weights p/q are unbounded. On the shipped
alanine-dipeptide model the masked dims held 0.02–0.04 % of random draws beyond 4 σ but 47–93 % of
the squared weight of the 300 largest weights (``data_free_benchmarks/RESULTS.md``). A Cauchy
latent C(m, s) instead maps to the wrapped Cauchy density on the circle, positive everywhere
(C(0, 1) to the uniform one exactly). With ``cauchy_mask`` and ``cauchy_weight`` ε those dims use
the defensive mixture (1 − ε) N(m, s²) + ε C(m, s) (Hesterberg 1995) with the same location /
log-scale heads: ε = 1 is the plain Cauchy; 0 < ε < 1 keeps the Gaussian's body and bounds
p/q by the Cauchy's floor. A draw picks the Cauchy with probability ε, as m + s tan(π(u − ½)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _zero_init_mlp(in_features: int, out_features: int, hidden: int, n_hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    head = nn.Linear(width, out_features)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


class _FastDensity(nn.Module):
    """Location–scale density, per dim Gaussian or (``cauchy_mask``) Cauchy; subclasses give the location and log-scale."""

    def __init__(self, fast_dim: int, cauchy_mask: Tensor | None = None, cauchy_weight: float = 1.0):
        super().__init__()
        self.fast_dim = fast_dim
        mask = torch.zeros(fast_dim, dtype=torch.bool) if cauchy_mask is None else torch.as_tensor(cauchy_mask, dtype=torch.bool)
        if mask.shape != (fast_dim,):
            raise ValueError(f"cauchy_mask must have shape ({fast_dim},), got {tuple(mask.shape)}")
        if not 0.0 <= cauchy_weight <= 1.0:
            raise ValueError(f"cauchy_weight must be in [0, 1], got {cauchy_weight}")
        # not persistent: it follows from the model's configuration, and weights saved without it still load
        self.register_buffer("cauchy_mask", mask, persistent=False)
        self.cauchy_weight = float(cauchy_weight)
        self.has_cauchy = bool(mask.any()) and cauchy_weight > 0.0

    def mean_and_log_std(self, z_slow: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def rsample(self, z_slow: Tensor) -> Tensor:
        mean, log_std = self.mean_and_log_std(z_slow)
        noise = torch.randn_like(mean)
        if self.has_cauchy:
            cauchy = torch.tan(math.pi * (torch.rand_like(mean) - 0.5))
            pick = self.cauchy_mask if self.cauchy_weight == 1.0 else self.cauchy_mask & (torch.rand_like(mean) < self.cauchy_weight)
            noise = torch.where(pick, cauchy, noise)
        return mean + torch.exp(log_std) * noise

    def log_prob(self, z_fast: Tensor, z_slow: Tensor) -> Tensor:
        mean, log_std = self.mean_and_log_std(z_slow)
        t = (z_fast - mean) * torch.exp(-log_std)
        per_dim = -0.5 * t.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        if self.has_cauchy:
            cauchy = -torch.log1p(t.square()) - log_std - math.log(math.pi)
            if self.cauchy_weight < 1.0:
                cauchy = torch.logaddexp(per_dim + math.log1p(-self.cauchy_weight), cauchy + math.log(self.cauchy_weight))
            per_dim = torch.where(self.cauchy_mask, cauchy, per_dim)
        return per_dim.sum(-1)


class StandardNormal(_FastDensity):
    """p(z_f | z_s) = N(0, I_df) (the defensive Cauchy mixture on the ``cauchy_mask`` dims), ignoring z_s."""

    def __init__(self, slow_dim: int, fast_dim: int, cauchy_mask: Tensor | None = None, cauchy_weight: float = 1.0):
        super().__init__(fast_dim, cauchy_mask, cauchy_weight)

    def mean_and_log_std(self, z_slow: Tensor) -> tuple[Tensor, Tensor]:
        zero = z_slow.new_zeros(z_slow.shape[0], self.fast_dim)
        return zero, zero


class ConditionalDiagonalGaussian(_FastDensity):
    """p(z_f | z_s) = N(A h(z_s) + MLP_m(h(z_s)), diag exp(c + MLP_s(h(z_s)))²), with h the identity,
    or h(z_s) = (cos z_s, sin z_s) when the slow latents are angles (``periodic_slow``), so that the
    conditional is continuous on the circle; on ``cauchy_mask`` the defensive Cauchy mixture with that location and scale."""

    def __init__(self, slow_dim: int, fast_dim: int, hidden: int = 64, n_hidden_layers: int = 2, periodic_slow: bool = False,
                 cauchy_mask: Tensor | None = None, cauchy_weight: float = 1.0):
        super().__init__(fast_dim, cauchy_mask, cauchy_weight)
        self.periodic_slow = periodic_slow
        features = 2 * slow_dim if periodic_slow else slow_dim
        self.linear_mean = nn.Linear(features, fast_dim, bias=False)
        nn.init.zeros_(self.linear_mean.weight)
        self.mean_net = _zero_init_mlp(features, fast_dim, hidden, n_hidden_layers)
        self.log_std_net = _zero_init_mlp(features, fast_dim, hidden, n_hidden_layers)
        self.log_std_offset = nn.Parameter(torch.zeros(fast_dim))

    def mean_and_log_std(self, z_slow: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([torch.cos(z_slow), torch.sin(z_slow)], dim=-1) if self.periodic_slow else z_slow
        mean = self.linear_mean(h) + self.mean_net(h)
        log_std = self.log_std_offset + self.log_std_net(h)
        return mean, log_std
