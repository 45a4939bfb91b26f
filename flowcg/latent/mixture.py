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
#: Points per block in the EM's E-step: (block, K, dim) float64 arrays of a few MB stay in cache.
EM_CHUNK = 8192
#: Exponents are floored here before ``exp`` in the EM. torch's vectorised float64 ``exp`` leaves
#: its fast path below the underflow limit (−745): 20 ns instead of 1 ns per element, which made
#: far-apart components (a 40-mode mixture over [−40, 40]², any narrow wrapped component) cost up
#: to 10× per EM iteration; and values near that limit turn into denormals whose products are slow
#: too. exp(−300) ≈ 5e-131 is zero for a responsibility and far from the denormal range.
EXP_FLOOR = -300.0


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
        for param, shape in ((self.means, (n_components, self.dim)), (self.log_stds, (n_components, self.dim)),
                             (self.logits, (n_components,))):
            param.data = param.new_zeros(shape)
            param.grad = None  # a gradient of the old shape would break the next backward (and torch.compile)
        self.n_components = n_components
        return self

    @torch.no_grad()
    def fit_weighted(
        self, z: Tensor, weights: Tensor, n_iter: int = 300, min_std: float = 0.05, seed: int = 0, tol: float = 1e-6,
        chunk_size: int = EM_CHUNK,
    ) -> dict:
        """Refit π, μ, σ in place to points z (B, dim) with weights (B,) ≥ 0 by EM.

        Starts from a weighted k-means++ seeding (distances on the torus when periodic), σ = 0.3,
        equal π; σ is floored at ``min_std`` so that no component collapses onto a few heavy points
        (and, for wrapped components, capped at 2 rad: broader is near-uniform on the circle).
        Stops after ``n_iter`` iterations or once the weighted mean log-likelihood gains < ``tol``.
        The points are visited in blocks of ``chunk_size`` (the sufficient statistics are sums, so
        the result does not depend on it; blocks that stay in cache make an iteration ≈ 10× faster
        than one pass over (B, K, dim, images) arrays). Returns ``{"iterations", "log_likelihood"}``
        (weighted mean log p(z) at the end).
        """
        if z.ndim != 2 or z.shape[1] != self.dim or weights.shape != z.shape[:1]:
            raise ValueError(f"fit_weighted needs z (B, {self.dim}) and weights (B,), got {tuple(z.shape)} and {tuple(weights.shape)}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError("fit_weighted needs finite, non-negative weights with a positive sum")
        if chunk_size < 1:
            raise ValueError(f"fit_weighted needs chunk_size ≥ 1, got {chunk_size}")
        ref = self.means
        z, w = z.to(dtype=torch.float64, device="cpu"), (weights / weights.sum()).to(dtype=torch.float64, device="cpu")
        means = self._seed_means(z, w, torch.Generator().manual_seed(seed))
        log_stds = torch.full_like(means, math.log(0.3))
        logits = torch.zeros(self.n_components, dtype=torch.float64)
        max_std = 2.0 if self.periodic else math.inf
        previous, iteration = -math.inf, 0
        for iteration in range(1, n_iter + 1):
            log_likelihood, mass, offset_sum, square_sum = self._em_statistics(z, w, means, log_stds, logits, chunk_size)
            if log_likelihood - previous < tol:
                break
            previous = log_likelihood
            safe_mass = mass.clamp_min(1e-300)[:, None]
            offset = offset_sum / safe_mass  # weighted mean of (unwrapped point − μ)
            variance = square_sum / safe_mass - offset.square()
            means = wrap(means + offset) if self.periodic else means + offset
            log_stds = 0.5 * torch.log(variance.clamp(min_std**2, max_std**2))
            logits = torch.log(mass.clamp_min(1e-300))
        for param, value in zip((self.means, self.log_stds, self.logits), (means, log_stds, logits)):
            param.copy_(value)
        return {"iterations": iteration, "log_likelihood": float((w * self.log_prob(z.to(ref)).double()).sum())}

    def _em_statistics(self, z: Tensor, w: Tensor, means: Tensor, log_stds: Tensor, logits: Tensor,
                       chunk_size: int) -> tuple[float, Tensor, Tensor, Tensor]:
        """E-step sums over all points: weighted mean log-likelihood, Σ_i w_i r_ik (K,), and the
        r-weighted first and second moments (K, dim) of the (unwrapped) point relative to μ_k."""
        log_norm = -log_stds.sum(-1) - 0.5 * self.dim * math.log(2 * math.pi) + torch.log_softmax(logits, 0)
        log_likelihood, mass = 0.0, torch.zeros_like(logits)
        first, second = torch.zeros_like(means), torch.zeros_like(means)
        block_terms = self._wrapped_block if self.periodic else self._euclidean_block
        for z_block, w_block in zip(z.split(chunk_size), w.split(chunk_size)):
            log_joint, moments = block_terms(z_block, means, log_stds)
            log_joint.add_(log_norm)  # (b, K): log π_k p(z_i | k)
            # log-sum-exp by hand, so that the one exp it needs is floored (EXP_FLOOR) and reused
            peak = log_joint.amax(1, keepdim=True)
            resp = log_joint.sub_(peak).clamp_min_(EXP_FLOOR).exp_()  # π_k p(z_i | k) / e^peak
            total = resp.sum(1, keepdim=True)
            log_likelihood += float(w_block @ (peak + total.log()).squeeze(1))
            resp.mul_(w_block[:, None] / total)  # w_i r_ik
            mass += resp.sum(0)
            block_first, block_second = moments(resp)
            first += block_first
            second += block_second
        if not self.periodic:  # raw moments Σ r z, Σ r z² → moments about μ
            first, second = first - mass[:, None] * means, second - 2 * means * first + mass[:, None] * means.square()
        return log_likelihood, mass, first, second

    @staticmethod
    def _euclidean_block(z: Tensor, means: Tensor, log_stds: Tensor):
        """Σ_d (z_d − μ_kd)²/σ_kd² expanded into matrix products (one (b, K) pass instead of
        dim of them); the moments are raw (Σ r z, Σ r z²), shifted to μ by the caller."""
        inv_var = torch.exp(-2 * log_stds)  # (K, dim)
        squared = z.square()
        quadratic = squared @ inv_var.T - 2 * z @ (means * inv_var).T + (means.square() * inv_var).sum(-1)
        return quadratic.mul_(-0.5), lambda resp: (resp.T @ z, resp.T @ squared)

    @staticmethod
    def _wrapped_block(z: Tensor, means: Tensor, log_stds: Tensor):
        """Wrapped components: with δ = wrap(z − μ) ∈ [−π, π) the images δ + 2πj have log-terms
        −(δ + 2πj)²/2σ², largest at j = 0, so per dimension

            log Σ_j N(δ + 2πj; 0, σ) = −δ²/2σ² + log(1 + Σ_{j≠0} e_j) − log σ√(2π),
            e_j = exp(−2πj(δ + πj)/σ²) ≤ 1,

        and the posterior ρ_j = e_j / Σ e over the wrap index gives E[δ + 2πj] = δ + 2π E[j] and
        E[(δ + 2πj)²] = δ² + 4πδ E[j] + 4π² E[j²]. Images |j| ≤ 2 are summed (|j| = 3 would add
        e ≤ exp(−12π²/σ²) < 1e-12 for σ ≤ 2 rad, the cap); while every σ ≤ 1 rad, |j| = 2 adds
        e ≤ exp(−4π²/σ²) < 1e-17 and is skipped. The moments are about μ.
        """
        images = (-2, -1, 1, 2) if float(log_stds.max()) > 0.0 else (-1, 1)
        # Layout (dim, b, K): each dimension's terms are one contiguous slab, so summing over the
        # dimensions adds slabs instead of reducing a length-dim axis (which dominated the profile).
        inv_var = torch.exp(-2 * log_stds).T[:, None, :]
        delta = wrap(z.T[:, :, None] - means.T[:, None, :])  # (dim, b, K)
        log_terms = delta.square().mul_(inv_var).mul_(-0.5)
        square = delta.square()
        total, first, second = torch.ones_like(delta), torch.zeros_like(delta), torch.zeros_like(delta)
        for j in images:
            term = (delta + math.pi * j).mul_(-2 * math.pi * j).mul_(inv_var).clamp_min_(EXP_FLOOR).exp_()
            total.add_(term)
            first.add_(term, alpha=j)
            second.add_(term, alpha=j * j)
        log_terms.add_(torch.log(total))
        first.div_(total)
        square.add_(delta * first, alpha=4 * math.pi).add_(second.div_(total), alpha=4 * math.pi**2)
        delta.add_(first, alpha=2 * math.pi)
        return log_terms.sum(0), lambda resp: ((delta * resp).sum(1).T, (square * resp).sum(1).T)

    def _seed_means(self, z: Tensor, w: Tensor, generator: torch.Generator) -> Tensor:
        """Weighted k-means++ seeding: each new mean is a point drawn ∝ w · (distance to the nearest mean)²."""
        means = [z[torch.multinomial(w, 1, generator=generator)]]
        nearest = torch.full_like(w, math.inf)
        for _ in range(1, self.n_components):
            diff = z - means[-1]
            if self.periodic:
                diff = wrap(diff)
            nearest = torch.minimum(nearest, diff.square().sum(-1))  # only the newest mean can be nearer
            means.append(z[torch.multinomial(w * nearest + 1e-300, 1, generator=generator)])
        return torch.cat(means)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n iid draws from p(z), shape (n, dim)."""
        component = torch.multinomial(self.weights, n, replacement=True)
        eps = torch.randn(n, self.dim, device=self.means.device, dtype=self.means.dtype)
        z = self.means[component] + torch.exp(self.log_stds[component]) * eps
        return wrap(z) if self.periodic else z
