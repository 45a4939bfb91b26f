"""``NonbondedForce`` with ``NoCutoff``: Coulomb + Lennard-Jones over the unordered pairs, exceptions
replacing their pairs (formula in the package docstring)."""

from __future__ import annotations

import numpy as np
import openmm
from openmm import unit
from torch import Tensor, nn

from flowcg.targets.forcefield.common import ONE_4PI_EPS0, _column, _unsupported, unordered_pairs


class Nonbonded(nn.Module):
    """Coulomb + Lennard-Jones over all atom pairs without cutoff, exceptions replacing their pairs.

    Per unordered pair (:func:`unordered_pairs`) U_ij = kq / r + a / r¹² − c / r⁶ with
    kq = k_e q_i q_j, a = 4εσ¹², c = 4εσ⁶ (zero for excluded pairs), so
    ∂U/∂r² = −½ kq/r³ − 6 a/r¹⁴ + 3 c/r⁸.
    """

    def __init__(self, force: openmm.NonbondedForce):
        super().__init__()
        if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
            raise _unsupported(f"NonbondedForce with nonbonded method {force.getNonbondedMethod()} (only NoCutoff)")
        if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets() or force.getNumGlobalParameters():
            raise _unsupported("NonbondedForce with parameter offsets or global parameters")
        n = force.getNumParticles()
        q, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
        for a in range(n):
            qa, sa, ea = force.getParticleParameters(a)
            q[a] = qa.value_in_unit(unit.elementary_charge)
            sig[a] = sa.value_in_unit(unit.nanometer)
            eps[a] = ea.value_in_unit(unit.kilojoule_per_mole)
        qq = np.outer(q, q)
        sigma = 0.5 * (sig[:, None] + sig[None, :])
        epsilon = np.sqrt(np.outer(eps, eps))
        for e in range(force.getNumExceptions()):
            a, b, qp, se, ee = force.getExceptionParameters(e)
            qq[a, b] = qq[b, a] = qp.value_in_unit(unit.elementary_charge**2)
            sigma[a, b] = sigma[b, a] = se.value_in_unit(unit.nanometer)
            epsilon[a, b] = epsilon[b, a] = ee.value_in_unit(unit.kilojoule_per_mole)
        i, j = unordered_pairs(n).numpy()
        self.register_buffer("kq", _column(ONE_4PI_EPS0 * qq[i, j]))
        self.register_buffer("a", _column(4.0 * epsilon[i, j] * sigma[i, j] ** 12))
        self.register_buffer("c", _column(4.0 * epsilon[i, j] * sigma[i, j] ** 6))

    def energy_and_dr2(self, r2: Tensor, inv_r: Tensor) -> tuple[Tensor, Tensor]:
        """U (B,) and ∂U/∂r² (P, B) from the pair r² and 1/r, both (P, B)."""
        inv_r2 = inv_r * inv_r
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        coulomb = self.kq * inv_r
        repulsion = self.a * inv_r6 * inv_r6
        dispersion = self.c * inv_r6
        energy = (coulomb + repulsion - dispersion).sum(0)
        return energy, inv_r2 * (-0.5 * coulomb - 6.0 * repulsion + 3.0 * dispersion)
