"""Bonded terms, each ``energy_and_gradient`` on atom-major coordinates (see the package docstring):

* ``HarmonicBondForce``      U = Σ ½ k (r − r₀)²
* ``HarmonicAngleForce``     U = Σ ½ k (θ − θ₀)²
* ``PeriodicTorsionForce``   U = Σ k (1 + cos(n φ − φ₀))
"""

from __future__ import annotations

import numpy as np
import openmm
import torch
from openmm import unit
from torch import Tensor, nn

from flowcg.targets.forcefield.common import _column, _cross, _dot, _gather, _require_nonperiodic


class HarmonicBonds(nn.Module):
    """U = Σ_b ½ k_b (r_b − r₀_b)², k in kJ/(mol nm²), r in nm; ∂U/∂x₁ = −∂U/∂x₀ = k (r − r₀) d/r,
    d = x₁ − x₀."""

    def __init__(self, force: openmm.HarmonicBondForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        self.register_buffer("idx", torch.tensor([p[:2] for p in params], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("r0", _column([p[2].value_in_unit(unit.nanometer) for p in params]))
        self.register_buffer(
            "k", _column([p[3].value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) for p in params])
        )

    def energy_and_gradient(self, y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """U (B,) and ∂U/∂x of the atoms ``idx[:, k]``, k = 0, 1, each (M, 3, B), from atom-major y (N, 3, B)."""
        p = _gather(y, self.idx)
        d = p[:, 1] - p[:, 0]
        r = _dot(d, d).sqrt()
        stretch = r - self.r0
        g = (self.k * stretch / r).unsqueeze(1) * d
        return (0.5 * self.k * stretch * stretch).sum(0), (-g, g)


class HarmonicAngles(nn.Module):
    """U = Σ_a ½ k_a (θ_a − θ₀_a)², k in kJ/(mol rad²), θ the angle between u = x₀ − x₁, v = x₂ − x₁.

    θ = atan2(|w|, u·v) with w = u × v (exact at every angle); ∂θ/∂u = (u × w)/(|u|²|w|),
    ∂θ/∂v = (w × v)/(|v|²|w|), ∂θ/∂x₁ = −∂θ/∂u − ∂θ/∂v. At θ = 0, π the gradient direction is
    undefined; |w| is floored there (as in OpenMM), which gives a zero force.
    """

    def __init__(self, force: openmm.HarmonicAngleForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        self.register_buffer("idx", torch.tensor([p[:3] for p in params], dtype=torch.long).reshape(-1, 3))
        self.register_buffer("theta0", _column([p[3].value_in_unit(unit.radian) for p in params]))
        self.register_buffer(
            "k", _column([p[4].value_in_unit(unit.kilojoule_per_mole / unit.radian**2) for p in params])
        )

    def energy_and_gradient(self, y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """U (B,) and ∂U/∂x of the atoms ``idx[:, k]``, k = 0…2, each (M, 3, B), from atom-major y (N, 3, B)."""
        p = _gather(y, self.idx)
        u, v = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1]
        w = _cross(u, v)
        norm_w = _dot(w, w).sqrt().clamp_min(torch.finfo(y.dtype).tiny ** 0.25)
        bend = torch.atan2(norm_w, _dot(u, v)) - self.theta0
        k_bend = self.k * bend
        g0 = (k_bend / (_dot(u, u) * norm_w)).unsqueeze(1) * _cross(u, w)
        g2 = (k_bend / (_dot(v, v) * norm_w)).unsqueeze(1) * _cross(w, v)
        return (0.5 * k_bend * bend).sum(0), (g0, -g0 - g2, g2)


class PeriodicTorsions(nn.Module):
    """U = Σ_t k_t (1 + cos(n_t φ_t − φ₀_t)), k in kJ/mol; φ the IUPAC dihedral in (−π, π].

    With b₁ = x₁ − x₀, b₂ = x₂ − x₁, b₃ = x₃ − x₂, A = b₁ × b₂, C = b₂ × b₃:
    φ = atan2(|b₂| b₁·C, A·C), and (Bekker; Blondel & Karplus 1996)
    ∂φ/∂x₀ = −|b₂| A/|A|², ∂φ/∂x₃ = |b₂| C/|C|², with s = p ∂φ/∂x₀ − q ∂φ/∂x₃,
    p = −b₁·b₂/|b₂|², q = −b₃·b₂/|b₂|²: ∂φ/∂x₁ = s − ∂φ/∂x₀, ∂φ/∂x₂ = −s − ∂φ/∂x₃.
    The geometry is computed once per distinct atom quadruple (several periodicities share one).
    """

    def __init__(self, force: openmm.PeriodicTorsionForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        quads, term_quad = np.unique(np.array([p[:4] for p in params], dtype=np.int64).reshape(-1, 4), axis=0, return_inverse=True)
        self.register_buffer("idx", torch.tensor(quads, dtype=torch.long))
        self.register_buffer("term_quad", torch.tensor(term_quad.reshape(-1), dtype=torch.long))
        self.register_buffer("n", _column([float(p[4]) for p in params]))
        self.register_buffer("phase", _column([p[5].value_in_unit(unit.radian) for p in params]))
        self.register_buffer("k", _column([p[6].value_in_unit(unit.kilojoule_per_mole) for p in params]))

    def energy_and_gradient(self, y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """U (B,) and ∂U/∂x of the atoms ``idx[:, k]``, k = 0…3, each (M, 3, B), from atom-major y (N, 3, B)."""
        p = _gather(y, self.idx)
        b1, b2, b3 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
        a, c = _cross(b1, b2), _cross(b2, b3)
        b2_sq = _dot(b2, b2)
        b2_norm = b2_sq.sqrt()
        phi = torch.atan2(b2_norm * _dot(b1, c), _dot(a, c))
        angle = self.n * phi.index_select(0, self.term_quad) - self.phase
        energy = (self.k * (1.0 + torch.cos(angle))).sum(0)
        du_dphi = torch.zeros_like(phi).index_add_(0, self.term_quad, -self.k * self.n * torch.sin(angle))
        g0 = (-du_dphi * b2_norm / _dot(a, a)).unsqueeze(1) * a
        g3 = (du_dphi * b2_norm / _dot(c, c)).unsqueeze(1) * c
        s = (-_dot(b1, b2) / b2_sq).unsqueeze(1) * g0 + (_dot(b3, b2) / b2_sq).unsqueeze(1) * g3
        return energy, (g0, s - g0, -s - g3, g3)
