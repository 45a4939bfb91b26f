"""Fixed bond lengths in batched Langevin dynamics: SHAKE positions, RATTLE velocities.

A system built with ``constraints=hbonds`` (:mod:`flowcg.targets.systems`) holds pairs (i, j)
whose distance σ_c(x) = |x_i − x_j| must stay d_c. :class:`BondConstraints` restores them after
every position move and removes the velocity components along them after every velocity change,
which turns BAOAB (:class:`~flowcg.md.langevin.LangevinBAOAB`) into its constrained form
(Leimkuhler & Matthews 2016, "constrained BAOAB", each A step followed by a SHAKE projection with
the velocity correction Δx / (Δt/2), each B and O step by a RATTLE projection). Its configurations
are distributed as exp(−U/kT) on the constraint manifold with respect to the measure induced by the
mass metric, as in OpenMM's constrained MD; for isolated X–H bonds that is the δ-constraint measure
of the internal-coordinate flow, and where constraints share a heavy atom (a methyl carbon) the two
differ by the Fixman factor det(Z)^½, Z_ab = Σ_i ∇σ_a·∇σ_b / m_i, which varies by ~1e-3 with the
H–C–H angles.

Both projections are solved by simultaneous (Jacobi) sweeps over all constraints of all replicas,
vectorised, until the largest relative violation is below ``tolerance``: X–H constraints couple
only through a shared heavy atom, whose small inverse mass makes the sweeps converge in a few
iterations. A replica whose positions do not converge in ``max_iterations`` sweeps is reported (the
integrator stops it, as it stops a replica that blows up), not hidden.
No library does batched SHAKE/RATTLE on torch tensors, hence the code.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from flowcg.errors import ConfigError

__all__ = ["BondConstraints"]

#: Largest relative violation |r² − d²| / d² (positions) or |v_ij · r| / (|r| v_scale) (velocities) accepted.
#: In float32 a coordinate of ~1 nm is rounded to ~6e-8 nm, so a 0.1 nm bond's r² carries ~1e-6 of
#: rounding noise: 1e-5 (a bond length within 5e-7 nm) is the tightest tolerance it can always meet.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


class BondConstraints:
    """Distance constraints |x_i − x_j| = d on batches of frames (B, N, 3) nm.

    Args:
        constraints: (i, j, length nm) triples, e.g. ``MolecularSystem.constraints``.
        masses_amu: (N,) atom masses in amu.
        max_iterations: sweeps allowed per projection.

    Examples:
        >>> rigid = BondConstraints([(0, 1, 0.1)], [1.0, 12.0])
        >>> before = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]], dtype=torch.float64)
        >>> after, converged = rigid.project_positions(before, before + torch.tensor([[0.0, 0.0, 0.0], [0.02, 0.01, 0.0]]))
        >>> round(float(torch.linalg.vector_norm(after[0, 1] - after[0, 0])), 9), bool(converged[0])
        (0.1, True)
    """

    def __init__(self, constraints: Sequence[tuple[int, int, float]], masses_amu, max_iterations: int = 500):
        if not constraints:
            raise ConfigError("BondConstraints needs at least one constraint")
        i, j, length = zip(*constraints)
        self.i, self.j = torch.tensor(i, dtype=torch.long), torch.tensor(j, dtype=torch.long)
        self.length = torch.tensor(length, dtype=torch.float64)
        masses = torch.as_tensor(masses_amu, dtype=torch.float64)
        if bool((self.length <= 0).any()) or bool((masses <= 0).any()) or int(max(self.i.max(), self.j.max())) >= len(masses):
            raise ConfigError("BondConstraints needs positive lengths and masses, and atom indices below the number of atoms")
        self.inv_mass = 1.0 / masses
        self.max_iterations = max_iterations

    def __len__(self) -> int:
        return len(self.length)

    def _per_atom(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        i, j = self.i.to(x.device), self.j.to(x.device)
        inv_i, inv_j = self.inv_mass.to(x)[i], self.inv_mass.to(x)[j]
        return i, j, inv_i, inv_j

    def violation(self, x: Tensor) -> Tensor:
        """Largest relative violation |r² − d²| / d² per replica, (B,)."""
        i, j, _, _ = self._per_atom(x)
        r2 = (x[:, i] - x[:, j]).square().sum(-1)
        d2 = self.length.to(x).square()
        return ((r2 - d2).abs() / d2).amax(-1)

    def project_positions(self, x_ref: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """SHAKE: x moved along the constraint directions of ``x_ref`` (which satisfies them), mass
        weighted, until every |x_i − x_j| = d. Returns the positions and, per replica, whether the
        sweeps converged (a replica whose step was too wild for them; the integrator stops it)."""
        i, j, inv_i, inv_j = self._per_atom(x)
        d2 = self.length.to(x).square()
        s = x_ref[:, i] - x_ref[:, j]  # (B, C, 3): directions of the constraint forces
        x = x.clone()
        tolerance = TOLERANCE.get(x.dtype, 1e-6)
        for _ in range(self.max_iterations):
            r = x[:, i] - x[:, j]
            excess = r.square().sum(-1) - d2  # (B, C)
            converged = (excess.abs() / d2).amax(-1) <= tolerance
            if bool(converged.all()):
                break
            g = excess / (2 * (r * s).sum(-1) * (inv_i + inv_j))
            step = g[..., None] * s
            x.index_add_(1, i, -step * inv_i[:, None])
            x.index_add_(1, j, step * inv_j[:, None])
        return x, converged & torch.isfinite(x).all(dim=(1, 2))

    def project_velocities(self, x: Tensor, v: Tensor) -> Tensor:
        """RATTLE: v with its components along the constraints removed, mass weighted, so that
        (v_i − v_j) · (x_i − x_j) = 0 for every constraint (a linear, diagonally dominant system:
        the sweeps converge; non-finite replicas are left to the integrator's checks)."""
        i, j, inv_i, inv_j = self._per_atom(x)
        r = x[:, i] - x[:, j]
        r2 = r.square().sum(-1)
        v = v.clone()
        tolerance = TOLERANCE.get(v.dtype, 1e-6)
        for _ in range(self.max_iterations):
            along = ((v[:, i] - v[:, j]) * r).sum(-1)  # (B, C)
            scale = (v.abs().amax(dim=(1, 2)).clamp_min(1e-30)[:, None] * r2.sqrt())
            if not bool(((along.abs() / scale) > tolerance).any()):  # NaN compares False: not waited for
                break
            k = along / (r2 * (inv_i + inv_j))
            step = k[..., None] * r
            v.index_add_(1, i, -step * inv_i[:, None])
            v.index_add_(1, j, step * inv_j[:, None])
        return v
