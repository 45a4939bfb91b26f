"""The backbone torsions of a peptide, residue by residue: which atoms, and their values.

Residue k has φ_k = C(k−1)–N–CA–C and ψ_k = N–CA–C–N(k+1) (mdtraj's ``indices_phi`` /
``indices_psi``), paired here by their shared CA. A dipeptide (Ace-Ala-Nme) has one pair,
Ace-(Ala)n-Nme has n. One source for the internal-coordinate map (which torsion coordinates are
backbone), the analysis (Ramachandran metrics per residue) and the biased walkers (their biases).
"""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch
from mdtraj.geometry.dihedral import indices_phi, indices_psi
from torch import Tensor

from flowcg.coordinates.geometry import dihedral

__all__ = ["atom_path_name", "backbone_dihedrals", "backbone_torsion_pairs"]


def backbone_torsion_pairs(topology: md.Topology) -> np.ndarray:
    """Atom indices (R, 2, 4): the (φ, ψ) quadruples of every residue that has both, in chain
    order; shape (0, 2, 4) for a molecule without any."""
    psi_by_ca = {int(q[1]): q for q in indices_psi(topology)}
    pairs = [(phi, psi_by_ca[int(phi[2])]) for phi in indices_phi(topology) if int(phi[2]) in psi_by_ca]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2, 4)


def backbone_dihedrals(x: Tensor, pairs) -> tuple[Tensor, Tensor]:
    """φ, ψ in rad, each (B, R), of frames x (B, N, 3) nm at the atom quadruples ``pairs`` (R, 2, 4)."""
    atoms = torch.as_tensor(pairs, dtype=torch.long, device=x.device)
    return tuple(dihedral(*(x[:, atoms[:, kind, k]] for k in range(4))) for kind in (0, 1))


def atom_path_name(topology: md.Topology, atoms) -> str:
    """``RESn:ATOM`` of each atom, joined by ``-`` (n the residue number), e.g. ``ACE1:C-ALA2:N-ALA2:CA-ALA2:C``."""
    return "-".join(f"{topology.atom(int(a)).residue.name}{topology.atom(int(a)).residue.resSeq}:{topology.atom(int(a)).name}" for a in atoms)
