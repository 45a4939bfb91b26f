"""A smooth bias potential on the backbone torsions (φ, ψ), grown by well-tempered metadynamics.

Biased MD with a *fixed* bias V(φ, ψ) samples p_V(x) ∝ exp(−β (U(x) + V(φ, ψ))); weighting each
frame by w = exp(+β V(φ, ψ)) recovers the Boltzmann distribution of U exactly, whatever V is. The
bias only decides how fast walkers cross between basins, so it need not be converged — only
frozen while frames are recorded. (Frames recorded while the bias still grows would need the
time-dependent c(t) correction of metadynamics; freezing it avoids that.)

Representation. V is a real 2-D Fourier series of order K on the torus,

    V(φ, ψ) = a(φ)ᵀ M a(ψ),   a(θ) = [1, cos θ, sin θ, cos 2θ, sin 2θ, …, cos Kθ, sin Kθ],

with M a (2K+1) × (2K+1) matrix in kJ/mol: smooth and periodic, so its forces (autograd through
the torsions) are continuous, and a whole batch costs one einsum.

Hills. A periodic Gaussian hill of height h and width σ centred at (φ₀, ψ₀) is the product of two
wrapped normals, h · g(φ − φ₀) g(ψ − ψ₀) with g(θ) = Σₙ exp(−(θ + 2πn)² / 2σ²) (peak 1 for σ ≪ π).
Its Fourier series is g(θ − θ₀) = (σ/√(2π)) [1 + 2 Σₖ e^{−k²σ²/2} (cos kθ cos kθ₀ + sin kθ sin kθ₀)],
i.e. a(θ)ᵀ c(θ₀), so depositing hills adds Σ_b h_b c(φ_b) c(ψ_b)ᵀ to M exactly, up to the
truncation at K (the dropped terms are below e^{−(K+1)²σ²/2} of the hill; choose K ≳ 3.5/σ).

Well-tempered metadynamics (Barducci, Bussi & Parrinello 2008) scales each hill by
exp(−V(s)/(k_B ΔT)) with ΔT = (γ − 1) T for a bias factor γ; the bias tends to −(1 − 1/γ) F(φ, ψ)
and flattens the barriers between the Ramachandran basins. Many walkers may deposit into one
bias (multiple-walker metadynamics, Raiteri et al. 2006).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowcg.errors import MissingFileError

__all__ = ["TorsionBias", "fourier_features"]


def fourier_features(theta: Tensor, order: int) -> Tensor:
    """a(θ) = [1, cos θ, sin θ, …, cos Kθ, sin Kθ] for θ (B,) in rad → (B, 2K+1)."""
    k = torch.arange(1, order + 1, dtype=theta.dtype, device=theta.device)
    angles = theta.unsqueeze(-1) * k
    pairs = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).flatten(-2)
    return torch.cat([torch.ones_like(theta).unsqueeze(-1), pairs], dim=-1)


class TorsionBias:
    """V(φ, ψ) in kJ/mol as a 2-D Fourier series of order K (see the module docstring).

    Args:
        coefficients: M, (2K+1, 2K+1) in kJ/mol; φ indexes the rows, ψ the columns.
    """

    def __init__(self, coefficients):
        m = torch.as_tensor(np.asarray(coefficients), dtype=torch.float64).clone()
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] % 2 != 1:
            raise ValueError(f"Fourier coefficients must be a (2K+1, 2K+1) matrix, got shape {tuple(m.shape)}")
        self.coefficients = m
        self.order = (m.shape[0] - 1) // 2

    @classmethod
    def zeros(cls, order: int) -> "TorsionBias":
        return cls(np.zeros((2 * order + 1, 2 * order + 1)))

    def __call__(self, phi: Tensor, psi: Tensor) -> Tensor:
        """V (B,) in kJ/mol at φ, ψ (B,) in rad, in their dtype; differentiable."""
        m = self.coefficients.to(phi)
        return torch.einsum("bi,ij,bj->b", fourier_features(phi, self.order), m, fourier_features(psi, self.order))

    def hill_features(self, theta: Tensor, width_rad: float) -> Tensor:
        """c(θ₀) (B, 2K+1): the wrapped-normal hill of width σ at θ₀ is a(θ)ᵀ c(θ₀)."""
        k = torch.arange(1, self.order + 1, dtype=torch.float64)
        damping = torch.cat([torch.ones(1, dtype=torch.float64), (2.0 * torch.exp(-0.5 * (k * width_rad) ** 2)).repeat_interleave(2)])
        return width_rad / math.sqrt(2 * math.pi) * damping * fourier_features(theta.double(), self.order)

    @torch.no_grad()
    def add_hills(self, phi: Tensor, psi: Tensor, heights_kj_mol: Tensor, width_rad: float) -> None:
        """Deposit periodic Gaussian hills of the given heights (B,) at (φ, ψ) (B,) in rad."""
        cphi, cpsi = self.hill_features(phi, width_rad), self.hill_features(psi, width_rad)
        self.coefficients += torch.einsum("b,bi,bj->ij", heights_kj_mol.double(), cphi, cpsi)

    def grid(self, n: int) -> np.ndarray:
        """V (n, n) in kJ/mol at θ_i = −π + 2π i / n, φ along axis 0."""
        theta = torch.as_tensor(-math.pi + 2 * math.pi * np.arange(n) / n)
        phi, psi = torch.meshgrid(theta, theta, indexing="ij")
        with torch.no_grad():
            return self(phi.reshape(-1), psi.reshape(-1)).reshape(n, n).numpy()

    def save(self, path: str | Path) -> None:
        np.save(path, self.coefficients.numpy())

    @classmethod
    def load(cls, path: str | Path) -> "TorsionBias":
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"torsion bias not found: {path}")
        return cls(np.load(path))
