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

Those widths are conditional ones; the stiff coordinates are not independent (the angles around
an sp³ carbon, a bond and the angles beside it). The same central differences give the whole
Hessian block H_ss of the stiff coordinates, whose inverse is their harmonic covariance at fixed
rotors, Σ = H_ss⁻¹ (``covariance="full"``). In widths, Σ = D F Fᵀ D with D = diag(σ) and F
the lower-triangular Cholesky factor of D⁻¹ Σ D⁻¹ (unit-free, F = I for independent
coordinates). With F, a standard normal y is the harmonic approximation of the Boltzmann
density at the minimum; without it, a flow has to learn the correlations. Scored at the rotors
of the minimum (2·10⁴ draws; ``data_free_benchmarks/RESULTS.md``), the Gaussian over the stiff
coordinates has Kish ESS 0.81 with F against 0.02 without on alanine dipeptide, 0.37 against
0.0002 on the tetrapeptide. Eigenvalues of H_ss below ``max_width⁻²`` are raised to it, so Σ is
positive definite even where the minimum is shallow.

:class:`HarmonicStandardization` is the fixed affine map y ↦ c = c* + σ ⊙ (F y) on the stiff
coordinates and y ↦ c* + y on the rotors, torsions wrapped back onto (−π, π]; its log|det| is
Σ log σ_i + Σ log F_ii over the stiff ones.
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
from flowcg.errors import ConfigError

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
    ``periodic`` marks the torsions (the stiff ones among them are the impropers);
    ``correlation``, (3N − 6, 3N − 6) lower-triangular, is the Cholesky factor F of the stiff
    coordinates' harmonic covariance in widths (identity rows and columns on the rotors), or None
    for independent stiff coordinates.
    """

    center: Tensor
    width: Tensor
    stiff: Tensor
    periodic: Tensor
    correlation: Tensor | None = None


#: ``covariance`` settings: independent stiff coordinates, or their full harmonic covariance.
COVARIANCES = ("diagonal", "full")
#: the default: the full covariance starts better but trains no better (data_free_benchmarks/RESULTS.md)
DEFAULT_COVARIANCE = "diagonal"


def harmonic_reference(energy_kT, transform: InternalCoordinateTransform, x_min_nm: np.ndarray, max_width: float = 0.5,
                       covariance: str = DEFAULT_COVARIANCE) -> HarmonicReference:
    """Centres and widths from the minimum ``x_min_nm`` of the reduced energy ``energy_kT`` (B, N, 3) → (B,);
    with ``covariance="full"`` also the correlation factor F of the stiff coordinates.

    Widths are capped at ``max_width`` (nm or rad) where the curvature is tiny or negative.
    """
    _check_covariance(covariance)
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
    hessian = (gradient[:dim] - gradient[dim:]).detach() / (2 * steps[:, None])  # row i: ∂(∂u/∂c)/∂c_i
    hessian = (hessian + hessian.T) / 2
    width = hessian.diagonal().clamp(min=max_width**-2).rsqrt()
    stiff, periodic = _stiff_and_periodic(transform)
    correlation = _correlation_factor(hessian, width, stiff, max_width) if covariance == "full" else None
    return HarmonicReference(center.detach(), width, stiff, periodic, correlation)


def _correlation_factor(hessian: Tensor, width: Tensor, stiff: Tensor, max_width: float) -> Tensor:
    """F with D F Fᵀ D = H_ss⁻¹ (eigenvalues of H_ss raised to ``max_width⁻²``), embedded in the
    identity. Stiff indices ascend, so F stays lower-triangular in coordinate order."""
    index = stiff.nonzero().ravel()
    eigenvalues, vectors = torch.linalg.eigh(hessian[index][:, index])
    covariance = vectors @ torch.diag(eigenvalues.clamp(min=max_width**-2).reciprocal()) @ vectors.T
    scaled = covariance / torch.outer(width[index], width[index])
    factor = torch.eye(len(width), dtype=hessian.dtype)
    factor[index[:, None], index[None, :]] = torch.linalg.cholesky(scaled)
    return factor


def unfitted_reference(transform: InternalCoordinateTransform, covariance: str = DEFAULT_COVARIANCE) -> HarmonicReference:
    """Centres 0, widths 1 (and F = I) with the right masks: the shape of a reference, for a model whose
    fitted standardisation is then restored from a saved state (no minimisation, no energy call)."""
    _check_covariance(covariance)
    zeros = torch.zeros(transform.dim, dtype=torch.float64)
    correlation = torch.eye(transform.dim, dtype=torch.float64) if covariance == "full" else None
    return HarmonicReference(zeros, torch.ones_like(zeros), *_stiff_and_periodic(transform), correlation)


def _check_covariance(covariance: str) -> None:
    if covariance not in COVARIANCES:
        raise ConfigError(f"unknown stiff_covariance '{covariance}'; choose one of {', '.join(COVARIANCES)}")


def _stiff_and_periodic(transform: InternalCoordinateTransform) -> tuple[Tensor, Tensor]:
    return ~transform.rotor_mask.cpu(), transform.periodic_mask.cpu()


class HarmonicStandardization(Transform):
    """Fixed map y ↦ c: c = c* + σ ⊙ (F y) on stiff coordinates (F = I without a correlation factor)
    and c_i = c*_i + y_i on rotors (a rotation, so the flow's circle is centred on the minimum's
    conformation); torsions wrapped."""

    def __init__(self, reference: HarmonicReference):
        super().__init__()
        stiff = reference.stiff.bool()
        self.register_buffer("center", reference.center.float())
        self.register_buffer("width", torch.where(stiff, reference.width, torch.ones_like(reference.width)).float())
        self.register_buffer("wrapped", reference.periodic.bool())
        self.correlation: Tensor | None
        self.register_buffer("correlation", None if reference.correlation is None else reference.correlation.float())

    def _log_det(self) -> Tensor:
        log_det = self.width.log().sum()
        return log_det if self.correlation is None else log_det + self.correlation.diagonal().log().sum()

    def forward(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        mixed = inputs if self.correlation is None else inputs @ self.correlation.T
        outputs = self.center + self.width * mixed
        outputs = torch.where(self.wrapped, wrap(outputs), outputs)
        return outputs, self._log_det().expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        offset = inputs - self.center
        offset = torch.where(self.wrapped, wrap(offset), offset) / self.width
        if self.correlation is not None:  # y = F⁻¹ offset, row-wise: solve y Fᵀ = offset
            offset = torch.linalg.solve_triangular(self.correlation.T, offset, upper=True, left=False)
        return offset, (-self._log_det()).expand(inputs.shape[0])
