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

:meth:`DiagonalGaussianMixture.fit_weighted` fits the mixture to weighted points by expectation–
maximisation (weighted maximum likelihood, i.e. forward KL to the weighted empirical measure).
For wrapped components the wrap indices m_d are latent too: given component k they are independent
per dimension with posterior ρ_ikdm ∝ N(z_id + 2πm_d; μ_kd, σ_kd), and the M-step averages the
unwrapped points z_id + 2πm_d. No library fits weighted wrapped-normal mixtures, hence the code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowcg.coordinates.geometry import wrap
from flowcg.errors import ConfigError

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
            raise ConfigError(f"mixture needs dim ≥ 1 and n_components ≥ 1, got dim={dim}, n_components={n_components}")
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
    def resize_(self, n_components: int) -> "DiagonalGaussianMixture":
        """Change K in place; the parameters keep their identity (an optimiser holding them stays
        valid) and hold placeholders (μ = 0, σ = 1, equal π) until fitted or loaded."""
        if n_components < 1:
            raise ConfigError(f"mixture needs n_components ≥ 1, got {n_components}")
        self.means.data = self.means.new_zeros(n_components, self.dim)
        self.log_stds.data = self.log_stds.new_zeros(n_components, self.dim)
        self.logits.data = self.logits.new_zeros(n_components)
        self.n_components = n_components
        return self

    @torch.no_grad()
    def fit_weighted(
        self, z: Tensor, weights: Tensor, n_iter: int = 300, min_std: float = 0.05, seed: int = 0, tol: float = 1e-6
    ) -> dict:
        """Refit π, μ, σ in place to points z (B, dim) with weights (B,) ≥ 0 by EM.

        Starts from a weighted k-means++ seeding (distances on the torus when periodic), σ = 0.3,
        equal π; σ is floored at ``min_std`` so that no component collapses onto a few heavy points
        (and, for wrapped components, capped at 2 rad: broader is near-uniform on the circle).
        Stops after ``n_iter`` iterations or once the weighted mean log-likelihood gains < ``tol``.
        Returns ``{"iterations", "log_likelihood"}`` (weighted mean log p(z) at the end).
        """
        if z.ndim != 2 or z.shape[1] != self.dim or weights.shape != z.shape[:1]:
            raise ValueError(f"fit_weighted needs z (B, {self.dim}) and weights (B,), got {tuple(z.shape)} and {tuple(weights.shape)}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError("fit_weighted needs finite, non-negative weights with a positive sum")
        ref = self.means
        z, w = z.to(dtype=torch.float64, device="cpu"), (weights / weights.sum()).to(dtype=torch.float64, device="cpu")
        means = self._seed_means(z, w, torch.Generator().manual_seed(seed))
        log_stds = torch.full_like(means, math.log(0.3))
        logits = torch.zeros(self.n_components, dtype=torch.float64)
        # Wraps m = −2…2 suffice while σ ≤ 2 rad (the next wrap lies ≥ 6σ away); σ is capped there.
        shifts = 2 * math.pi * torch.arange(-2, 3, dtype=torch.float64) if self.periodic else torch.zeros(1, dtype=torch.float64)
        unwrapped = z[:, None, :, None] + shifts  # (B, 1, dim, W)
        max_std = 2.0 if self.periodic else math.inf
        previous, iteration = -math.inf, 0
        for iteration in range(1, n_iter + 1):
            # E-step: one set of Gaussian terms gives both p(k | z_i) and the wrap posteriors
            scaled = (unwrapped - means[..., None]) * torch.exp(-log_stds)[..., None]
            terms = scaled.mul_(scaled).mul_(-0.5)  # (B, K, dim, W)
            per_dim = torch.logsumexp(terms, dim=-1)  # (B, K, dim)
            log_resp = per_dim.sum(-1) - log_stds.sum(-1) - 0.5 * self.dim * math.log(2 * math.pi) + torch.log_softmax(logits, 0)
            log_likelihood = float((w * torch.logsumexp(log_resp, dim=1)).sum())
            if log_likelihood - previous < tol:
                break
            previous = log_likelihood
            resp = torch.softmax(log_resp, dim=1).mul_(w[:, None])  # w_i r_ik
            mass = resp.sum(0)  # (K,)
            joint = terms.sub_(per_dim[..., None]).exp_().mul_(resp[:, :, None, None])  # w_i r_ik ρ_ikdm
            # M-step
            safe_mass = mass.clamp_min(1e-300)[:, None]
            first = torch.einsum("bkdw,bdw->kd", joint, unwrapped[:, 0]) / safe_mass
            second = torch.einsum("bkdw,bdw->kd", joint, unwrapped[:, 0].pow(2)) / safe_mass - first.pow(2)
            means = wrap(first) if self.periodic else first
            log_stds = 0.5 * torch.log(second.clamp(min_std**2, max_std**2))
            logits = torch.log(mass.clamp_min(1e-300))
        for param, value in zip((self.means, self.log_stds, self.logits), (means, log_stds, logits)):
            param.copy_(value)
        return {"iterations": iteration, "log_likelihood": float((w * self.log_prob(z.to(ref)).double()).sum())}

    def _seed_means(self, z: Tensor, w: Tensor, generator: torch.Generator) -> Tensor:
        """Weighted k-means++ seeding: each new mean is a point drawn ∝ w · (distance to the nearest mean)²."""
        means = z[torch.multinomial(w, 1, generator=generator)]
        for _ in range(1, self.n_components):
            diff = z[:, None, :] - means[None]
            if self.periodic:
                diff = wrap(diff)
            nearest = diff.pow(2).sum(-1).min(dim=1).values
            means = torch.cat([means, z[torch.multinomial(w * nearest + 1e-300, 1, generator=generator)]])
        return means

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n iid draws from p(z), shape (n, dim)."""
        component = torch.multinomial(self.weights, n, replacement=True)
        eps = torch.randn(n, self.dim, device=self.means.device, dtype=self.means.dtype)
        z = self.means[component] + torch.exp(self.log_stds[component]) * eps
        return wrap(z) if self.periodic else z
