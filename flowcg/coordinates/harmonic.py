"""Data-free standardisation of internal coordinates: the harmonic approximation at the minimum.

A flow over raw internal coordinates would start with bonds spread over nanometres. Without MD
data, the natural reference is the force field's own energy minimum x*: each stiff coordinate
c_i (bond, angle, improper torsion) is centred on its value c_i* there and scaled by its
harmonic width in the reduced energy u = U/kT,

    σ_i = (∂²u/∂c_i² at x*)^(−1/2),

the thermal fluctuation of c_i with the others held fixed (e.g. σ ≈ 0.003 nm for a C–H bond at
300 K). The curvature comes from central differences of the autograd gradient ∂u/∂c at x*.
Free rotor torsions are periodic and get circular layers; they are only rotated so that the
flow's circle is centred on their value at the minimum.

:class:`HarmonicStandardization` is the fixed affine map y ↦ c = c* + σ y on the stiff
coordinates and y ↦ c* + y on the rotors, torsions wrapped back onto (−π, π]; its log|det| is
Σ log σ_i over the stiff ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openmm
import torch
from nflows.transforms import Transform
from openmm import unit
from torch import Tensor

from flowcg.coordinates.geometry import wrap
from flowcg.coordinates.internal import InternalCoordinateTransform

#: Central-difference steps: nm for bonds, rad for angles and torsions.
_STEP_NM, _STEP_RAD = 1e-4, 1e-3


def minimized_positions(system: openmm.System, positions_nm: np.ndarray, tolerance_kj_per_mol_nm: float = 1.0) -> np.ndarray:
    """Local energy minimum (N, 3) in nm from ``positions_nm``, on OpenMM's Reference platform (deterministic)."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, tolerance_kj_per_mol_nm)
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


@dataclass
class HarmonicReference:
    """Centres c* (rad / nm) and harmonic widths σ of every internal coordinate, shape (3N − 6,).

    ``stiff`` marks the coordinates to standardise (all but the free rotor torsions);
    ``periodic`` marks the torsions (the stiff ones among them are the impropers).
    """

    center: Tensor
    width: Tensor
    stiff: Tensor
    periodic: Tensor


def harmonic_reference(energy_kT, transform: InternalCoordinateTransform, x_min_nm: np.ndarray, max_width: float = 0.5) -> HarmonicReference:
    """Centres and widths from the minimum ``x_min_nm`` of the reduced energy ``energy_kT`` (B, N, 3) → (B,).

    Widths are capped at ``max_width`` (nm or rad) where the curvature is tiny or negative.
    """
    x = torch.as_tensor(x_min_nm, dtype=torch.float64)[None]
    center, _ = transform.inverse(x)
    center = center[0]
    dim = transform.dim
    steps = torch.tensor([_STEP_NM if kind == "bond" else _STEP_RAD for kind in transform.kind], dtype=torch.float64)
    displaced = center.repeat(2 * dim, 1)
    displaced[torch.arange(dim), torch.arange(dim)] += steps
    displaced[dim + torch.arange(dim), torch.arange(dim)] -= steps
    displaced.requires_grad_(True)
    cartesian, _ = transform.forward(displaced)
    (gradient,) = torch.autograd.grad(energy_kT(cartesian).sum(), displaced)
    curvature = (gradient[:dim, :].diagonal() - gradient[dim:, :].diagonal()) / (2 * steps)
    width = curvature.clamp(min=max_width**-2).rsqrt()
    return HarmonicReference(center.detach(), width.detach(), *_stiff_and_periodic(transform))


def unfitted_reference(transform: InternalCoordinateTransform) -> HarmonicReference:
    """Centres 0 and widths 1 with the right masks: the shape of a reference, for a model whose
    fitted standardisation is then restored from a saved state (no minimisation, no energy call)."""
    zeros = torch.zeros(transform.dim, dtype=torch.float64)
    return HarmonicReference(zeros, torch.ones_like(zeros), *_stiff_and_periodic(transform))


def _stiff_and_periodic(transform: InternalCoordinateTransform) -> tuple[Tensor, Tensor]:
    return ~transform.rotor_mask.cpu(), transform.periodic_mask.cpu()


class HarmonicStandardization(Transform):
    """Fixed map y ↦ c: c_i = c*_i + σ_i y_i on stiff coordinates and c_i = c*_i + y_i on rotors
    (a rotation, so the flow's circle is centred on the minimum's conformation); torsions wrapped."""

    def __init__(self, reference: HarmonicReference):
        super().__init__()
        stiff = reference.stiff.bool()
        self.register_buffer("center", reference.center.float())
        self.register_buffer("width", torch.where(stiff, reference.width, torch.ones_like(reference.width)).float())
        self.register_buffer("wrapped", reference.periodic.bool())

    def forward(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        outputs = self.center + self.width * inputs
        outputs = torch.where(self.wrapped, wrap(outputs), outputs)
        return outputs, self.width.log().sum().expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        offset = inputs - self.center
        offset = torch.where(self.wrapped, wrap(offset), offset)
        return offset / self.width, (-self.width.log().sum()).expand(inputs.shape[0])
