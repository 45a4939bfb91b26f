"""Synthetic targets with exact answers: the double well and Gaussian mixtures.

All energies are reduced (kT = 1, dimensionless coordinates). The mixtures use
u(x) = −log p(x) with p normalised, so their exact log Z is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from flowcg.targets.base import Target


class DoubleWell(Target):
    """2-D double well u(x) = x1⁴/4 − 3 x1² + x1 + x2²/2 (at β = 1).

    The left well (x1 < 0) is deeper: the linear term tilts the quartic. Z factorises into a 1-D
    quadrature over x1 times √(2π) from the Gaussian x2, so log Z and the x1 marginal are exact.
    """

    name = "double_well"
    x1_range = (-6.0, 6.0)  # holds all but ~1e-30 of the x1 mass

    def __init__(self):
        super().__init__((2,))
        z1, _ = integrate.quad(lambda a: math.exp(-self.u1(a)), *self.x1_range, epsabs=0, epsrel=1e-12, limit=200)
        self._z1 = z1
        self.log_z_exact = math.log(z1) + 0.5 * math.log(2 * math.pi)

    @staticmethod
    def u1(x1):
        """The x1 part of the energy, x1⁴/4 − 3 x1² + x1 (works on floats, arrays and tensors)."""
        return x1**4 / 4 - 3 * x1**2 + x1

    def _reduced_energy(self, x: Tensor) -> Tensor:
        return self.u1(x[:, 0]) + 0.5 * x[:, 1] ** 2

    def x1_density(self, x1: np.ndarray) -> np.ndarray:
        """Exact marginal density p(x1)."""
        return np.exp(-self.u1(np.asarray(x1, dtype=np.float64))) / self._z1

    def x1_mass(self, lo: float, hi: float) -> float:
        """Exact probability that lo < x1 < hi."""
        lo, hi = max(lo, self.x1_range[0]), min(hi, self.x1_range[1])
        if hi <= lo:
            return 0.0
        mass, _ = integrate.quad(lambda a: math.exp(-self.u1(a)), lo, hi, epsabs=0, epsrel=1e-10, limit=200)
        return mass / self._z1

    def sample_exact(self, n: int, seed: int = 0) -> Tensor:
        """Exact samples: x1 by inverse-CDF on a fine grid, x2 ~ N(0, 1)."""
        rng = np.random.default_rng(seed)
        grid = np.linspace(*self.x1_range, 200_001)
        cdf = integrate.cumulative_trapezoid(self.x1_density(grid), grid, initial=0.0)
        x1 = np.interp(rng.uniform(0, cdf[-1], n), cdf, grid)
        x2 = rng.standard_normal(n)
        return torch.as_tensor(np.stack([x1, x2], axis=1))


class GaussianMixture(Target):
    """Mixture of Gaussians with diagonal covariances, u(x) = −log Σ_k π_k N(x; μ_k, diag σ_k²).

    Args:
        means: (K, D) component means.
        stds: (K, D) or scalar component standard deviations.
        weights: (K,) mixture weights (normalised here); equal when omitted.
    """

    name = "gaussian_mixture"
    log_z_exact = 0.0

    def __init__(self, means: Sequence, stds, weights: Sequence | None = None):
        means_t = torch.as_tensor(np.asarray(means, dtype=np.float64))
        if means_t.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means_t.shape)}")
        super().__init__((means_t.shape[1],))
        stds_t = torch.as_tensor(np.asarray(stds, dtype=np.float64)).expand_as(means_t).clone()
        if weights is None:
            weights = np.ones(means_t.shape[0])
        weights_t = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if weights_t.shape != (means_t.shape[0],) or (weights_t <= 0).any():
            raise ValueError("weights must be K positive numbers")
        self.register_buffer("means", means_t)
        self.register_buffer("stds", stds_t)
        self.register_buffer("weights", weights_t / weights_t.sum())

    @property
    def n_modes(self) -> int:
        return self.means.shape[0]

    def component_log_probs(self, x: Tensor) -> Tensor:
        """log π_k + log N(x; μ_k, σ_k²), shape (B, K)."""
        diff = (x[:, None, :] - self.means) / self.stds
        log_norm = -0.5 * diff.pow(2).sum(-1) - self.stds.log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_norm + self.weights.log()

    def _reduced_energy(self, x: Tensor) -> Tensor:
        return -torch.logsumexp(self.component_log_probs(x), dim=-1)

    def assign_modes(self, x: Tensor) -> Tensor:
        """Index of the most probable component for each sample, shape (B,)."""
        self.check_shape(x)
        return self.component_log_probs(x.to(self.means)).argmax(-1)

    def sample_exact(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=g)
        eps = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return self.means.cpu()[k] + self.stds.cpu()[k] * eps


class GaussianMixture2D(GaussianMixture):
    """FAB's 40-mode 2-D mixture: equal weights, isotropic std ``std`` (FAB: softplus(1) ≈ 1.3133),
    means spread over [−40, 40]² (the exact values live in conf/target/gmm40.yaml)."""

    name = "gmm40"

    def __init__(self, means: Sequence, std: float = 1.3132616875182228):
        super().__init__(means, std)


class SlowFastGaussianMixture(Target):
    """Stupp & Koutsourelakis' 20-D mixture: a slow block with K equal-weight modes and a fast
    block slaved to it.

    x = (x_s, x_f): x_s ~ Σ_k (1/K) N(μ_k, σ_s² I) in R^ds, and x_f = B x_s + σ_f ε in R^df with
    ε ~ N(0, I). The density is exact: p(x) = p_s(x_s) · N(x_f; B x_s, σ_f² I), and log Z = 0.
    """

    name = "gmm20"
    log_z_exact = 0.0

    def __init__(self, slow_means: Sequence, coupling: Sequence, slow_std: float = 0.1, fast_std: float = 0.1):
        slow = GaussianMixture(slow_means, slow_std)
        coupling_t = torch.as_tensor(np.asarray(coupling, dtype=np.float64))
        if coupling_t.dim() != 2 or coupling_t.shape[1] != slow.dim:
            raise ValueError(f"coupling B must have shape (df, {slow.dim}), got {tuple(coupling_t.shape)}")
        super().__init__((slow.dim + coupling_t.shape[0],))
        self.slow = slow
        self.slow_dim = slow.dim
        self.fast_std = float(fast_std)
        self.register_buffer("coupling", coupling_t)

    @property
    def n_modes(self) -> int:
        return self.slow.n_modes

    @property
    def weights(self) -> Tensor:
        return self.slow.weights

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, : self.slow_dim], x[:, self.slow_dim :]

    def _reduced_energy(self, x: Tensor) -> Tensor:
        x_slow, x_fast = self._split(x)
        u_slow = self.slow._reduced_energy(x_slow)
        residual = (x_fast - x_slow @ self.coupling.T) / self.fast_std
        df = x_fast.shape[1]
        u_fast = 0.5 * residual.pow(2).sum(-1) + df * math.log(self.fast_std) + 0.5 * df * math.log(2 * math.pi)
        return u_slow + u_fast

    def assign_modes(self, x: Tensor) -> Tensor:
        self.check_shape(x)
        return self.slow.assign_modes(self._split(x)[0])

    def sample_exact(self, n: int, seed: int = 0) -> Tensor:
        x_slow = self.slow.sample_exact(n, seed)
        g = torch.Generator().manual_seed(seed + 1)
        eps = torch.randn(n, self.coupling.shape[0], generator=g, dtype=torch.float64)
        return torch.cat([x_slow, x_slow @ self.coupling.cpu().T + self.fast_std * eps], dim=1)
