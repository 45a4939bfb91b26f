"""Learnable diagonal Gaussian mixture: the prior over the slow latent variables (the CVs).

p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), with π = softmax(logits), σ = exp(log_σ), all learnable.
Reverse-KL training needs gradients through samples, and a component index is discrete, so
samples are drawn *stratified*: n_k fixed draws from each component k, reparameterised as
z = μ_k + σ_k ε. A sample from component k then carries weight π_k / n_k, which makes
Σ_i weight_i f(z_i) an unbiased estimate of E_p[f] whose gradient reaches π exactly
(no score-function term needed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class DiagonalGaussianMixture(nn.Module):
    """K-component diagonal Gaussian mixture over R^dim.

    Args:
        dim: latent dimension.
        n_components: K.
        init_spread: component means start uniform in [−init_spread, init_spread]^dim (a
            single component starts at the origin), so that a K-mode prior can meet K basins.
        init_std: initial σ of every component.
        seed: seed for the initial means (independent of the global RNG).
    """

    def __init__(self, dim: int, n_components: int = 1, init_spread: float = 1.0, init_std: float = 1.0, seed: int = 0):
        super().__init__()
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
        """log π_k + log N(z; μ_k, σ_k²) for every k, shape (B, K)."""
        diff = (z[:, None, :] - self.means) * torch.exp(-self.log_stds)
        log_norm = -0.5 * diff.pow(2).sum(-1) - self.log_stds.sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
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
        return z, sample_weights

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n iid draws from p(z), shape (n, dim)."""
        component = torch.multinomial(self.weights, n, replacement=True)
        eps = torch.randn(n, self.dim, device=self.means.device, dtype=self.means.dtype)
        return self.means[component] + torch.exp(self.log_stds[component]) * eps
