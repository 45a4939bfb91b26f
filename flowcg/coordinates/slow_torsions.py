"""Which torsions carry a molecule's slow latents, decided from the force field alone (no MD, no names).

``slow_coordinates: auto`` (conf/model/internal.yaml) puts the slow latents on the ``slow_dim``
*softest conformational torsions*, found in two steps:

1. **Candidates.** Every free rotor torsion of the Z-matrix (one per rotatable bond; see
   :func:`~flowcg.coordinates.internal.zmatrix_from_topology`) except the *symmetric rotors*: a
   bond one of whose ends carries only two or more identical terminal atoms (CH₃, NH₃⁺, CF₃,
   COO⁻ …). Turning such a group only permutes identical atoms, so its minima are one physical
   state and it cannot be a collective variable (the same reason dihedral PCA and MSM featurisations
   leave methyl torsions out).
2. **Softness.** A relaxed scan of each candidate: the torsion restrained (harmonic, ``force_constant``)
   at ``n_points`` angles around the circle, everything else minimised, each point started from the
   last, once each way round, the lower energy kept per point (OpenMM's Reference platform:
   deterministic). The profile U_j (kJ/mol, without the restraint)
   gives a Boltzmann marginal p_j ∝ exp(−U_j / kT) at the target's temperature, and the score is its
   circular variance

       V = 1 − |Σ_j p_j exp(i τ_j)|   ∈ [0, 1]:

   0 for a torsion pinned in one well, large for one that spreads over several wells or a wide basin.
   Large-amplitude motions are the slow ones (essential dynamics: Amadei et al. 1993; dihedral PCA:
   Mu et al. 2005, Altis et al. 2007), and their amplitude is what V measures, per torsion, from the
   energy alone.

A barrier-height criterion would choose the peptide bonds ω (a ~70 kJ/mol barrier to cis) over φ
and ψ; a population criterion cannot separate a 0.1 % cis state from the 0.2 % α_L basin. Amplitude
separates them by an order of magnitude (alanine dipeptide, 300 K: φ, ψ ≈ 0.2–0.3, ω ≈ 0.02).

The relaxed profile is a potential energy, not a free energy (no vibrational entropy), which is why
it ranks rather than estimates: the flow learns the actual marginals.

``slow_blocks: bonded`` then groups the chosen torsions for the slow prior
(:func:`coupled_torsion_blocks`): two torsions whose rotation axes share an atom (a residue's φ
about N–Cα and ψ about Cα–C) move the same atoms against each other and have a joint, non-product
distribution (the Ramachandran plot); torsions about bonds that share no atom (ψ_i and φ_{i+1},
across the planar peptide bond) are coupled only through the rest of the molecule, which the flow's
couplings model. Each group gets its own mixture (:class:`~flowcg.latent.product.BlockMixture`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import mdtraj as md
import numpy as np
import openmm
import torch
from openmm import unit

from flowcg.coordinates.backbone import atom_path_name
from flowcg.coordinates.bonds import bonded_neighbours
from flowcg.coordinates.geometry import dihedral
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.errors import ConfigError
from flowcg.units import kT

__all__ = ["SlowTorsionDiscovery", "coupled_torsion_blocks", "discover_slow_torsions", "relaxed_torsion_scan", "symmetric_rotor"]


def symmetric_rotor(topology: md.Topology, b: int, a: int) -> bool:
    """True when the bond b–a turns a symmetric group: one end's other neighbours are ≥ 2 terminal
    atoms of one element and nothing else (CH₃ seen from its carbon, NH₃⁺, COO⁻)."""
    bonded = bonded_neighbours(topology)
    for end, other in ((b, a), (a, b)):
        group = set(bonded[end]) - {other}
        elements = {topology.atom(i).element.symbol for i in group}
        if len(group) >= 2 and len(elements) == 1 and all(len(bonded[i]) == 1 for i in group):
            return True
    return False


def relaxed_torsion_scan(system: openmm.System, positions_nm: np.ndarray, atoms, n_points: int = 24, direction: int = 1,
                         force_constant: float = 2000.0, tolerance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Relaxed scan of the torsion ``atoms`` (4 indices): angles (rad, as reached) and potential
    energies (kJ/mol, restraint excluded), shape (n_points,) each.

    The restraint ½ k Δτ² (k = ``force_constant`` kJ/mol/rad², Δτ wrapped) moves the torsion in
    steps of ``direction`` · 2π / n_points from its value at ``positions_nm``, once round the circle;
    each point is minimised (to ``tolerance`` kJ/mol/nm) from the previous one, constraints kept.
    Point j is at start + direction · 2πj / n_points.
    """
    scanned = copy.deepcopy(system)
    used = {force.getForceGroup() for force in scanned.getForces()}
    free = [g for g in range(32) if g not in used]
    if not free:
        raise ConfigError("the system uses all 32 force groups; no group is left for the scan restraint")
    restraint = openmm.CustomTorsionForce("0.5*k_scan*min(d, 2*pi_scan - d)^2; d = abs(theta - theta0_scan)")
    for name, value in (("k_scan", force_constant), ("theta0_scan", 0.0), ("pi_scan", math.pi)):
        restraint.addGlobalParameter(name, value)
    restraint.addTorsion(*[int(i) for i in atoms], [])
    restraint.setForceGroup(free[0])
    scanned.addForce(restraint)
    context = openmm.Context(scanned, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm * unit.nanometer)
    start = _torsion(positions_nm, atoms)
    energy_groups = used or {0}
    angles, energies = np.empty(n_points), np.empty(n_points)
    for j in range(n_points):
        context.setParameter("theta0_scan", math.remainder(start + direction * 2 * math.pi * j / n_points, 2 * math.pi))
        openmm.LocalEnergyMinimizer.minimize(context, tolerance)
        state = context.getState(getEnergy=True, getPositions=True, groups=energy_groups)
        here = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        angles[j] = _torsion(here, atoms)
        energies[j] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return angles, energies


def _torsion(positions_nm: np.ndarray, atoms) -> float:
    frame = torch.as_tensor(np.asarray(positions_nm, dtype=np.float64))
    return float(dihedral(*(frame[int(i)] for i in atoms)))


def circular_spread(angles: np.ndarray, energies_kj_per_mol: np.ndarray, temperature_K: float) -> float:
    """Circular variance 1 − |E exp(iτ)| of the Boltzmann marginal p_j ∝ exp(−U_j / kT) on scan points."""
    weights = np.exp(-(energies_kj_per_mol - energies_kj_per_mol.min()) / kT(temperature_K))
    return float(1.0 - abs(np.sum(weights * np.exp(1j * angles))) / weights.sum())


@dataclass
class SlowTorsionDiscovery:
    """What :func:`discover_slow_torsions` found.

    Attributes:
        selected: the chosen internal-coordinate indices, ascending (the slow latents' order).
        candidates: per candidate torsion: ``index``, ``atoms`` (names), ``spread`` (circular
            variance), ``profile_kj_per_mol`` (relaxed scan, minimum at 0) and ``angles_rad``.
        symmetric_rotors: rotor torsions left out as symmetric, each ``{index, atoms}``.
        temperature_K, n_points, wall_time_s: the scan's settings and cost (``minimisations`` of them).
    """

    selected: list[int]
    candidates: list[dict]
    symmetric_rotors: list[dict]
    temperature_K: float
    n_points: int
    minimisations: int
    wall_time_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """One line per candidate, softest first, the selected marked."""
        ranked = sorted(self.candidates, key=lambda c: -c["spread"])
        lines = [f"{'*' if c['index'] in self.selected else ' '} {c['index']:4d} {c['atoms']:<40s} spread {c['spread']:.3f}" for c in ranked]
        lines += [f"  {r['index']:4d} {r['atoms']:<40s} symmetric rotor (left out)" for r in self.symmetric_rotors]
        return "\n".join(lines)


def discover_slow_torsions(system: openmm.System, topology: md.Topology, transform: InternalCoordinateTransform,
                           x_min_nm: np.ndarray, slow_dim: int, temperature_K: float, n_points: int = 24) -> SlowTorsionDiscovery:
    """The ``slow_dim`` softest non-symmetric rotor torsions of the molecule (module docstring),
    scanned from its energy minimum ``x_min_nm`` (N, 3) nm at ``temperature_K``."""
    started = time.perf_counter()
    candidates, symmetric = [], []
    for index in transform.rotor_mask.nonzero().ravel().tolist():
        atoms = [int(a) for a in transform.atom_indices[index]]  # (x, b, a, t): the rotation is about b–a
        entry = {"index": index, "atoms": atom_path_name(topology, atoms)}
        if symmetric_rotor(topology, atoms[1], atoms[2]):
            symmetric.append(entry)
            continue
        # one scan each way round, the lower energy per point: a scan that drags a strained
        # structure past a barrier (hysteresis) would otherwise make a soft torsion look stiff
        angles, forward = relaxed_torsion_scan(system, x_min_nm, atoms, n_points, direction=1)
        backward_angles, backward = relaxed_torsion_scan(system, x_min_nm, atoms, n_points, direction=-1)
        mirror = (-np.arange(n_points)) % n_points  # backward point j sits at forward point −j
        lower = backward[mirror] < forward
        angles, energies = np.where(lower, backward_angles[mirror], angles), np.minimum(forward, backward[mirror])
        entry.update(spread=circular_spread(angles, energies, temperature_K),
                     profile_kj_per_mol=(energies - energies.min()).round(3).tolist(), angles_rad=angles.round(4).tolist())
        candidates.append(entry)
    if len(candidates) < slow_dim:
        raise ConfigError(f"slow_coordinates: auto found {len(candidates)} conformational torsions, fewer than slow_dim = {slow_dim}")
    ranked = sorted(candidates, key=lambda c: (-c["spread"], c["index"]))
    selected = sorted(c["index"] for c in ranked[:slow_dim])
    return SlowTorsionDiscovery(selected, candidates, symmetric, float(temperature_K), n_points,
                                2 * n_points * len(candidates), time.perf_counter() - started)


def coupled_torsion_blocks(transform: InternalCoordinateTransform, indices: list[int]) -> list[list[int]]:
    """Partition of the torsions ``indices`` (internal-coordinate indices) into groups connected by
    shared rotation-axis atoms (module docstring), as lists of positions in ``indices``, ordered
    by their first position.

    Alanine dipeptide's φ (C–N–Cα–C, axis N–Cα) and ψ (N–Cα–C–N, axis Cα–C) share Cα: one
    block; a peptide of R residues gives R (φ_i, ψ_i) blocks."""
    axes = [{int(a) for a in transform.atom_indices[i][1:3]} for i in indices]
    group = list(range(len(indices)))  # union-find over positions

    def root(p: int) -> int:
        while group[p] != p:
            group[p] = group[group[p]]
            p = group[p]
        return p

    for p in range(len(indices)):
        for q in range(p):
            if axes[p] & axes[q]:
                group[root(p)] = root(q)
    blocks: dict[int, list[int]] = {}
    for p in range(len(indices)):
        blocks.setdefault(root(p), []).append(p)
    return sorted(blocks.values(), key=lambda block: block[0])
