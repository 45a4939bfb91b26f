"""Batched molecular geometry in torch: distances, bond angles, dihedrals, signed volumes.

All functions take positions of shape (..., 3) in nm and broadcast over leading dimensions.
Angles are in rad. The dihedral follows the IUPAC/mdtraj sign convention and lies in (−π, π].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def distance(a: Tensor, b: Tensor) -> Tensor:
    """|b − a| in nm, shape (...)."""
    return torch.linalg.vector_norm(b - a, dim=-1)


def bond_angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Angle a–b–c at vertex b, in [0, π] rad.

    atan2(|u × v|, u · v) instead of arccos(u · v / |u||v|): accurate near 0 and π and
    with a finite gradient there.
    """
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.vector_norm(torch.cross(u, v, dim=-1), dim=-1), (u * v).sum(-1))


def wrap_angle(angle: Tensor) -> Tensor:
    """Map angles onto (−π, π] (atan2 can return exactly −π, which belongs to +π here)."""
    wrapped = torch.remainder(angle + math.pi, 2 * math.pi) - math.pi
    return torch.where(wrapped <= -math.pi, wrapped + 2 * math.pi, wrapped)


def dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Dihedral a–b–c–d in (−π, π] rad: rotation about b→c taking the a-side onto the d-side.

    Same sign as mdtraj.compute_dihedrals (positive = clockwise looking along b→c).
    """
    b0, b1, b2 = b - a, c - b, d - c
    n2 = torch.cross(b1, b2, dim=-1)
    y = torch.linalg.vector_norm(b1, dim=-1) * (b0 * n2).sum(-1)
    x = (torch.cross(b0, b1, dim=-1) * n2).sum(-1)
    return wrap_angle(torch.atan2(y, x))


def signed_volume(center: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Triple product (a − center) · ((b − center) × (c − center)) in nm³.

    Its sign is the handedness of the three substituents a, b, c around ``center``; it flips
    under a mirror reflection and is invariant under rotations and translations.
    """
    return ((a - center) * torch.cross(b - center, c - center, dim=-1)).sum(-1)


def wrap(angle: Tensor) -> Tensor:
    """Angle(s) in rad mapped to [−π, π)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi
