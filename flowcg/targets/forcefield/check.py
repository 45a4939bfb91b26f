"""The self-check against OpenMM: tolerances per dtype, the per-configuration disagreement, and
:func:`check_against_openmm`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import openmm
import torch
from torch import Tensor

from flowcg.targets.forcefield.common import ForceFieldMismatchError

if TYPE_CHECKING:  # the force field imports this module
    from flowcg.targets.forcefield.model import TorchForceField


#: (|ΔE| absolute kJ/mol, |ΔE| relative, max|ΔF| absolute kJ/(mol nm), max|ΔF| relative to max|F|)
CHECK_TOLERANCES = {torch.float64: (1e-3, 1e-7, 1e-2, 1e-6), torch.float32: (0.05, 1e-5, 1.0, 1e-4)}


def disagreement(energy, ref_energy, forces, ref_forces, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per configuration: (beyond :data:`CHECK_TOLERANCES` of ``dtype``?, |ΔE|, max|ΔF|), energies (B,)
    and forces (B, N, 3) as arrays or tensors; a configuration finite in one set and not in the other
    disagrees, one non-finite in both does not."""
    energy, ref_energy, forces, ref_forces = (
        a.detach().double().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a, dtype=np.float64)
        for a in (energy, ref_energy, forces, ref_forces)
    )
    finite, ref_finite = np.isfinite(energy), np.isfinite(ref_energy)
    both = finite & ref_finite
    de = np.where(both, np.abs(energy - ref_energy), 0.0)
    df = np.where(both, np.nan_to_num(np.abs(forces - ref_forces), nan=np.inf).max(axis=(1, 2)), 0.0)
    e_abs, e_rel, f_abs, f_rel = CHECK_TOLERANCES[dtype]
    bad = (finite != ref_finite) | (de > e_abs + e_rel * np.where(both, np.abs(ref_energy), 0.0))
    bad |= df > f_abs + f_rel * np.where(both, np.nan_to_num(np.abs(ref_forces), nan=0.0).max(axis=(1, 2)), 0.0)
    return bad, de, df


def check_against_openmm(
    forcefield: TorchForceField, system: openmm.System, positions: np.ndarray, n_perturbed: int = 3, seed: int = 0
) -> dict[str, float]:
    """Compare energies and forces with OpenMM's Reference platform; raise on disagreement.

    The configurations are ``positions`` and ``n_perturbed`` copies displaced by 0.005 nm Gaussian
    noise (enough to move every term off its minimum). Returns the worst |ΔE| and max|ΔF|.
    """
    from flowcg.targets.openmm_bridge import OpenMMEvaluator

    rng = np.random.default_rng(seed)
    x = positions[None] + 0.005 * rng.standard_normal((n_perturbed + 1, *positions.shape))
    x[0] = positions
    ref_energy, ref_forces = OpenMMEvaluator(system, platform="Reference").evaluate(x)
    energy, forces = forcefield.energy_and_forces(torch.as_tensor(x, dtype=forcefield.dtype, device=forcefield.device))
    bad, de, df = disagreement(energy, ref_energy, forces, ref_forces, forcefield.dtype)
    if bad.any():
        raise ForceFieldMismatchError(
            f"torch force field ({forcefield.dtype}) disagrees with OpenMM: max |ΔE| = {de.max():.3g} kJ/mol "
            f"(E = {ref_energy.tolist()}), max |ΔF| = {df.max():.3g} kJ/(mol nm); terms: {list(forcefield.terms)}"
        )
    return {"max_abs_energy_error": float(de.max()), "max_abs_force_error": float(df.max())}
