"""Chirality of amino-acid CA centres: detect and reject D-configurations.

A flow over internal coordinates can place CB and HA on the wrong sides of the backbone,
producing the D-enantiomer at CA. The force field cannot tell them apart (same energy), so such
samples are physically wrong yet carry normal weights; FAB drops them before evaluation.

Score per centre (nm³), with V(c; a, b, d) = (a − c) · ((b − c) × (d − c)):

    s = V(CA; N, C, CB) − V(CA; N, C, HA).

CB and HA sit on opposite sides of the N–CA–C plane, so the two volumes have opposite signs and
the difference is a robust signed measure of which side CB is on. Calibrated on the shipped
L-alanine structure (openmmtools' alanine-dipeptide-gbsa, ``flowcg/targets/data``), where
s = +0.0044 nm³; so L ⇔ s > 0 and D ⇔ s < 0. The sign is invariant under rotations and
translations and flips under a mirror reflection. Glycine (no CB) has no centre.
"""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch
from torch import Tensor

from flowcg.coordinates.geometry import signed_volume

#: Sign of the score for the L-configuration (calibrated on the shipped L-alanine, see above).
L_SIGN = 1.0


class CAChirality:
    """D/L detection at every CA centre of ``topology`` that carries N, C, CB and HA.

    Attributes:
        centers: (n_centres, 5) int array of atom indices (CA, N, C, CB, HA).
    """

    def __init__(self, topology: md.Topology):
        rows = []
        for residue in topology.residues:
            names = {atom.name: atom.index for atom in residue.atoms}
            ha = names.get("HA", names.get("HA2"))
            if {"CA", "N", "C", "CB"} <= names.keys() and ha is not None:
                rows.append([names["CA"], names["N"], names["C"], names["CB"], ha])
        if not rows:
            raise ValueError("topology has no CA centre with N, C, CB and HA (nothing chiral to check)")
        self.centers = np.asarray(rows, dtype=np.int64)

    def score(self, x: Tensor) -> Tensor:
        """Chirality score s (nm³) per frame and centre, shape (B, n_centres); L ⇔ L_SIGN·s > 0."""
        x = torch.as_tensor(x)
        ca, n, c, cb, ha = (x[:, self.centers[:, i]] for i in range(5))
        return signed_volume(ca, n, c, cb) - signed_volume(ca, n, c, ha)

    def is_d(self, x: Tensor) -> Tensor:
        """Boolean mask (B,): True where any CA centre of frame x (B, N, 3) is in the D-configuration."""
        return (L_SIGN * self.score(x) < 0).any(dim=-1)

    def fraction_d(self, x: Tensor) -> float:
        """Fraction of frames with at least one D centre."""
        return float(self.is_d(x).double().mean())

    def keep_l(self, x: Tensor, *aligned: Tensor) -> tuple[Tensor, ...]:
        """Drop frames with a D centre from x and from every tensor aligned with it along dim 0
        (e.g. log-densities or energies); returns (x_L, *aligned_L)."""
        keep = ~self.is_d(x)
        return (x[keep], *(a[keep.to(a.device)] for a in aligned))
