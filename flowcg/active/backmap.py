"""Backmapping a backbone CG frame to an all-atom structure by its backbone torsions.

For a CG mapping that keeps the backbone atoms of φ (C–N–CA–C) and ψ (N–CA–C–N), the CG frame
fixes φ and ψ. The backmapped structure is a template (the force-field minimum) in internal
coordinates with its φ and ψ torsion coordinates replaced by the CG frame's,

    x = IC⁻¹(b*, θ*, τ* with τ_φ ← φ(X), τ_ψ ← ψ(X)),

so every other degree of freedom stays at the template and the side groups turn rigidly with
the backbone. It is the starting point of the MD oracle and defines the flow oracle's slow
latent; it is not itself a Boltzmann sample.
"""

from __future__ import annotations

import numpy as np
import torch
from mdtraj.geometry.dihedral import indices_phi, indices_psi

from flowcg.cg.mapping import CGMapping
from flowcg.coordinates.geometry import dihedral
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.errors import ConfigError

__all__ = ["TorsionBackmapper"]


class TorsionBackmapper:
    """All-atom structures (B, N, 3) nm for CG frames (B, n_beads, 3) nm (module docstring).

    Args:
        transform: the molecule's internal-coordinate map; it must hold φ and ψ as torsion
            coordinates (``phi_index``, ``psi_index``).
        template_nm: (N, 3) all-atom structure whose other internal coordinates are kept.
        mapping: a CG mapping whose beads include the four atoms of φ and of ψ.
    """

    def __init__(self, transform: InternalCoordinateTransform, template_nm: np.ndarray, mapping: CGMapping):
        if transform.phi_index is None or transform.psi_index is None:
            raise ConfigError("the internal-coordinate map has no single φ and ψ torsion to set")
        bead_of_atom = {int(a): i for i, a in enumerate(mapping.bead_atoms)}
        quads = []
        for quad in (indices_phi(mapping.topology)[0], indices_psi(mapping.topology)[0]):
            missing = [int(a) for a in quad if int(a) not in bead_of_atom]
            if missing:
                raise ConfigError(f"the CG mapping lacks backbone atoms {missing}: its frames do not fix φ and ψ")
            quads.append([bead_of_atom[int(a)] for a in quad])
        self.transform = transform
        self.torsion_beads = torch.as_tensor(quads, dtype=torch.long)  # (2, 4): φ, ψ
        template = torch.as_tensor(np.asarray(template_nm), dtype=torch.float64)[None]
        self.template_ic, _ = transform.inverse(template)

    def torsions(self, cg_nm) -> torch.Tensor:
        """(B, 2) backbone (φ, ψ) in rad of CG frames (B, n_beads, 3) nm."""
        x = torch.as_tensor(np.asarray(cg_nm), dtype=torch.float64)
        q = self.torsion_beads
        return torch.stack([dihedral(x[:, a], x[:, b], x[:, c], x[:, d]) for a, b, c, d in q.tolist()], dim=1)

    def __call__(self, cg_nm) -> np.ndarray:
        torsions = self.torsions(cg_nm)
        ic = self.template_ic.expand(len(torsions), -1).clone()
        ic[:, self.transform.phi_index] = torsions[:, 0]
        ic[:, self.transform.psi_index] = torsions[:, 1]
        x, _ = self.transform(ic)
        return x.numpy()
