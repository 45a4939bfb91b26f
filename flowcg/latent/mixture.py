"""Learnable diagonal Gaussian mixture: the prior over the slow latent variables (the CVs).

p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), with π = softmax(logits), σ = exp(log_σ), all learnable.
Reverse-KL training needs gradients through samples, and a component index is discrete, so
samples are drawn *stratified*: n_k fixed draws from each component k, reparameterised as
z = μ_k + σ_k ε. A sample from component k then carries weight π_k / n_k, which makes
Σ_i weight_i f(z_i) an unbiased estimate of E_p[f] whose gradient reaches π exactly
(no score-function term needed).

Periodic variant (``periodic=True``, for slow latents that are torsions): each component is a
product of *wrapped* normals on the circle, z = wrap(μ_k + σ_k ε) ∈ [−π, π) (rad), with density

    WN(z; μ, σ) = Σ_m N(z + 2πm; μ, σ),   m = −M … M,

summed to M = 4 (exact to < 1e-12 relative for σ ≤ 3 rad). The mixture then has no seam: mass can
sit anywhere on the torus, which a Gaussian pushed through a fixed circle map cannot do near the
map's cut.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowcg.coordinates.geometry import wrap

#: Wraps summed on each side in the wrapped-normal density.
WRAPS = 4


class DiagonalGaussianMixture(nn.Module):
    """K-component diagonal Gaussian mixture over R^dim.

    Args:
        dim: latent dimension.
        n_components: K.
        init_spread: component means start uniform in [−init_spread, init_spread]^dim (a
            single component starts at the origin), so that a K-mode prior can meet K basins.
        init_std: initial σ of every component.
        seed: seed for the initial means (independent of the global RNG).
        periodic: components are wrapped normals on [−π, π) (see the module docstring).
    """

    def __init__(self, dim: int, n_components: int = 1, init_spread: float = 1.0, init_std: float = 1.0, seed: int = 0,
                 periodic: bool = False):
        super().__init__()
        self.periodic = periodic
        if dim < 1 or n_components < 1:
            raise ValueError(f"mixture needs dim ≥ 1 and n_components ≥ 1, got dim={dim}, n_components={n_components}")
        self.dim = dim
        self.n_components = n_components
        g = torch.Generator().manual_seed(seed)
        means = (2 * torch.rand(n_components, dim, generator=g) - 1) * init_spread
        if n_components == 1:
            means.zero_()
        self.means = nn.Parameter(means)
        self.log_stds = nn.Parameter(torch.full((n_components, dim), math.log(init_std)))
        self.logits = nn.Parameter(torch.zeros(n_components))

    @property
    def weights(self) -> Tensor:
        """Mixture weights π, shape (K,)."""
        return torch.softmax(self.logits, dim=0)

    def component_log_prob(self, z: Tensor) -> Tensor:
        """log π_k + log N(z; μ_k, σ_k²) (wrapped if periodic) for every k, shape (B, K)."""
        diff = z[:, None, :] - self.means  # (B, K, dim)
        if self.periodic:
            shifts = 2 * math.pi * torch.arange(-WRAPS, WRAPS + 1, device=z.device, dtype=z.dtype)
            diff = diff[..., None] + shifts  # (B, K, dim, 2M + 1)
            scaled = diff * torch.exp(-self.log_stds)[..., None]
            per_dim = torch.logsumexp(-0.5 * scaled.pow(2), dim=-1)
        else:
            per_dim = -0.5 * (diff * torch.exp(-self.log_stds)).pow(2)
        log_norm = per_dim.sum(-1) - self.log_stds.sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_norm + torch.log_softmax(self.logits, dim=0)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z), shape (B,)."""
        return torch.logsumexp(self.component_log_prob(z), dim=-1)

    def responsibilities(self, z: Tensor) -> Tensor:
        """Posterior component probabilities p(k | z), shape (B, K)."""
        return torch.softmax(self.component_log_prob(z), dim=-1)

    def rsample_stratified(self, n: int) -> tuple[Tensor, Tensor]:
        """n reparameterised draws split evenly over the components.

        Returns:
            z: (n, dim) samples, component-major order.
            sample_weights: (n,) weights π_k / n_k that sum to 1 and carry the gradient to π.
        """
        counts = torch.full((self.n_components,), n // self.n_components, dtype=torch.long)
        counts[: n % self.n_components] += 1
        component = torch.repeat_interleave(torch.arange(self.n_components), counts).to(self.means.device)
        eps = torch.randn(n, self.dim, device=self.means.device, dtype=self.means.dtype)
        z = self.means[component] + torch.exp(self.log_stds[component]) * eps
        sample_weights = self.weights[component] / counts.to(self.means)[component]
        return (wrap(z) if self.periodic else z), sample_weights

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n iid draws from p(z), shape (n, dim)."""
        component = torch.multinomial(self.weights, n, replacement=True)
        eps = torch.randn(n, self.dim, device=self.means.device, dtype=self.means.dtype)
        z = self.means[component] + torch.exp(self.log_stds[component]) * eps
        return wrap(z) if self.periodic else z
