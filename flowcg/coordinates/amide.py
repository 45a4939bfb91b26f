"""Cis and trans amide (peptide) bonds: which isomer a configuration holds.

An amide bond C(=O)–N has a partial double bond: its torsion ω = X–C–N–Y (X the carbon before the
carbonyl carbon, Y the carbon after the nitrogen) sits near 180° (trans) or 0° (cis), separated by
a barrier of about 80 kJ/mol. Both are states of the force field's Boltzmann distribution, but MD
at 300 K does not cross between them on any time scale simulated here, so an MD or walker
reference started trans holds the trans state only. A flow whose latent reaches every angle of ω
(a defensive Cauchy on the rotor latents, :mod:`flowcg.latent.conditional`) draws cis isomers now
and then, and their importance weights measure how little of them q holds: this module counts
them (cis ⇔ |ω| < 90°).

The bonds are found from the topology's bonds, not from residue names: a carbon bonded to an
oxygen and to a nitrogen, with a carbon on either side (so the caps ACE and NME count).
"""

from __future__ import annotations

import math

import mdtraj as md
import numpy as np
import torch
from torch import Tensor

from flowcg.coordinates.bonds import bonded_neighbours
from flowcg.coordinates.geometry import dihedral

__all__ = ["AmideBonds"]


class AmideBonds:
    """The amide bonds of ``topology`` and their ω torsions.

    Attributes:
        torsions: (n_bonds, 4) int array of atom indices (X, C, N, Y) of every ω.

    Raises:
        ValueError: the topology has no amide bond.
    """

    def __init__(self, topology: md.Topology):
        neighbours = bonded_neighbours(topology)
        atoms = list(topology.atoms)
        symbol = [atom.element.symbol for atom in atoms]

        def carbons(atom: int, other: int) -> list[int]:
            found = [n for n in neighbours[atom] if symbol[n] == "C" and n != other]
            return sorted(found, key=lambda n: atoms[n].name != "CA")  # proline's N has CA and CD: ω runs through CA

        rows = []
        for c in range(len(atoms)):
            if symbol[c] != "C" or not any(symbol[o] == "O" for o in neighbours[c]):
                continue
            for n in (n for n in neighbours[c] if symbol[n] == "N"):
                before, after = carbons(c, n), carbons(n, c)
                if before and after:
                    rows.append([before[0], c, n, after[0]])
        if not rows:
            raise ValueError("topology has no amide bond C(=O)-N between two carbons")
        self.torsions = np.asarray(rows, dtype=np.int64)

    def omega(self, x: Tensor) -> Tensor:
        """ω (rad, in (−π, π]) of every amide bond for frames x (B, atoms, 3): shape (B, n_bonds)."""
        x = torch.as_tensor(x)
        return dihedral(*(x[:, self.torsions[:, i]] for i in range(4)))

    def is_cis(self, x: Tensor) -> Tensor:
        """Boolean (B, n_bonds): True where the bond is cis (|ω| < 90°)."""
        return self.omega(x).abs() < math.pi / 2
