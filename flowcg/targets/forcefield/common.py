"""What every force term shares: the Coulomb constant, the errors, parameter columns, the pair
list and the component-major vector kernels (coordinates atom-major ``(N, 3, B)``, see the package
docstring)."""

from __future__ import annotations

import numpy as np
import openmm
import torch
from torch import Tensor


#: 1/(4π ε₀) in kJ nm/(mol e²), the value OpenMM's NonbondedForce and GBSAOBCForce use.
ONE_4PI_EPS0 = 138.93545764438198


class UnsupportedForceError(NotImplementedError):
    """An OpenMM force (or force setting) that the torch backend does not implement."""


class ForceFieldMismatchError(RuntimeError):
    """The torch force field disagrees with OpenMM beyond tolerance."""


def _unsupported(what: str) -> UnsupportedForceError:
    return UnsupportedForceError(f"torch backend does not implement {what}; use backend='openmm'")


def _require_nonperiodic(force: openmm.Force) -> None:
    if force.usesPeriodicBoundaryConditions():
        raise _unsupported(f"{type(force).__name__} with periodic boundary conditions")


def _column(values) -> Tensor:
    """Per-term parameters as a float64 column (M, 1) that broadcasts over the batch axis; the
    module is cast to its working dtype once, at the end."""
    return torch.tensor(np.asarray(values, dtype=np.float64).reshape(-1, 1))


def unordered_pairs(n_atoms: int) -> Tensor:
    """The atom pairs i < j, shape (2, n(n−1)/2): the pair order every pair term uses."""
    return torch.triu_indices(n_atoms, n_atoms, 1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """a × b for component-major vectors of shape (M, 3, B)."""
    a0, a1, a2 = a.unbind(1)
    b0, b1, b2 = b.unbind(1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """a · b for component-major vectors (M, 3, B) → (M, B)."""
    return (a * b).sum(1)


def _gather(y: Tensor, idx: Tensor) -> Tensor:
    """Atoms idx (M, k) of atom-major coordinates y (N, 3, B) → (M, k, 3, B).

    index_select over the leading atom axis copies whole contiguous rows: an order of magnitude
    faster (forward and backward) than advanced indexing of (B, N, 3).
    """
    return y.index_select(0, idx.reshape(-1)).view(*idx.shape, *y.shape[1:])
