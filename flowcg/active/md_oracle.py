"""Short restrained OpenMM MD as oracle: thermal all-atom frames near a CG query, with forces.

For a CG query X (a backbone frame, so it fixes φ(X), ψ(X)) the oracle starts from the
backmapped structure x_bm (:class:`~flowcg.active.backmap.TorsionBackmapper`), minimises,
draws velocities at T and runs Langevin MD (LangevinMiddleIntegrator) under a harmonic restraint
on the backbone torsions toward the query's,

    U_r(x) = ½ k Σ_{τ ∈ {φ, ψ}} Δ_τ²,    Δ_τ = |τ(x) − τ(X)| wrapped to [0, π]
                                          (= min(d, 2π − d), d = |τ(x) − τ(X)|),

with no flat bottom. After ``equilibration_steps`` it keeps ``n_frames`` frames, one every
``frame_interval_steps``, each with the *unrestrained* potential energy U(x) and forces
f(x) = −∇U(x): the restraint lives in its own force group, left out of the recorded state. Labels
are (C x_k, D f(x_k)) with weight 1 each (:mod:`flowcg.active.labels`).

Why unbiased forces are exact labels (umbrella-sampling argument): the biased density is
p_r(x) ∝ exp(−(U(x) + U_r(x))/kT), and U_r depends on x only through φ(C x), ψ(C x), functions
of the CG coordinates. So p_r(x | C x = X) = p(x | C x = X): the bias reweights CG frames but not
the all-atom configurations behind one, and E_r[D f | C x = X] is still the mean force at X.
Using the biased forces would add −∇U_r, which is not part of the CG free energy. (This holds
at equilibrium of the restrained ensemble; a short run from x_bm is only approximately relaxed in
the other degrees of freedom.)

Cost: ``n_energy_evaluations`` counts per query the MD steps run (equilibration_steps + n_frames ·
frame_interval_steps; fewer for a query whose run failed) plus ``minimize_iterations``, the
minimiser's nominal budget of one evaluation per L-BFGS iteration. It is an estimate, not a
bound: OpenMM may stop earlier, or spend extra evaluations in a line search, and does not report
how many it used.

Reproducibility: one Context per :meth:`MDOracle.label` call; the integrator's noise is seeded
with seed + 1 (OpenMM reads 0 as "random"), the velocities of query q from (seed, q). Queries run
in order in one Context, so a query's frames also depend on the queries before it in the batch.
The same seed and batch give bitwise-identical labels on the CPU platform with ``threads=1``
(more threads may change the order of force sums).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import openmm
from openmm import unit

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.labels import Labels
from flowcg.cg.mapping import CGMapping
from flowcg.errors import ConfigError
from flowcg.targets.openmm_bridge import available_platforms, default_platform
from flowcg.targets.systems import langevin_simulation, openmm_seed

__all__ = ["MDOracle"]

log = logging.getLogger(__name__)

#: OpenMM's default minimiser tolerance, kJ/mol/nm (root-mean-square force).
MINIMIZE_TOLERANCE = 10.0
_K_NAME = "flowcg_torsion_restraint_k"


def _velocity_seed(seed: int, query: int) -> int:
    """OpenMM seed of query ``query``'s velocities, mixed from (seed, query)."""
    return openmm_seed(int(np.random.SeedSequence([abs(int(seed)), int(query)]).generate_state(1)[0]))


class MDOracle:
    """Labels from short torsion-restrained Langevin MD per CG query (module docstring).

    Args:
        target: the molecular target (``system``, ``topology``, ``temperature``); its System is
            copied, never changed.
        mapping: the CG mapping the labels are expressed in.
        backmapper: gives the starting structure and the (φ, ψ) of each query.
        restraint_kJ_mol_rad2: k of the torsion restraint, kJ/mol/rad².
        minimize_iterations: L-BFGS iterations of the restrained minimisation (0: none).
        equilibration_steps: MD steps before the first recorded frame.
        n_frames: frames recorded per query.
        frame_interval_steps: MD steps between recorded frames.
        timestep_fs, friction_per_ps: Langevin integrator settings (temperature: the target's).
        platform: ``"auto"`` (CPU if available, else Reference) or an available OpenMM platform.
        threads: CPU-platform threads (None: OpenMM's default); 1 keeps labels bitwise reproducible.
    """

    name = "md"

    def __init__(self, target, mapping: CGMapping, backmapper: TorsionBackmapper, *,
                 restraint_kJ_mol_rad2: float = 500.0, minimize_iterations: int = 200,
                 equilibration_steps: int = 500, n_frames: int = 10, frame_interval_steps: int = 50,
                 timestep_fs: float = 1.0, friction_per_ps: float = 1.0, platform: str = "auto",
                 threads: int | None = 1):
        available = available_platforms()
        if platform != "auto" and platform not in available:
            raise ConfigError(f"unknown OpenMM platform '{platform}'; available: auto, {', '.join(available)}")
        if restraint_kJ_mol_rad2 < 0 or timestep_fs <= 0 or friction_per_ps < 0:
            raise ConfigError("restraint_kJ_mol_rad2 and friction_per_ps must be ≥ 0 and timestep_fs > 0")
        if minimize_iterations < 0 or equilibration_steps < 0 or n_frames < 1 or frame_interval_steps < 1:
            raise ConfigError("minimize_iterations and equilibration_steps must be ≥ 0, n_frames and "
                             "frame_interval_steps ≥ 1")
        if mapping.n_atoms != target.system.getNumParticles():
            raise ConfigError(f"the mapping has {mapping.n_atoms} atoms, the target's system "
                             f"{target.system.getNumParticles()}")
        self.target = target
        self.mapping = mapping
        self.backmapper = backmapper
        self.minimize_iterations = int(minimize_iterations)
        self.equilibration_steps = int(equilibration_steps)
        self.n_frames = int(n_frames)
        self.frame_interval_steps = int(frame_interval_steps)
        self.timestep_fs = float(timestep_fs)
        self.friction_per_ps = float(friction_per_ps)
        self.platform = default_platform() if platform == "auto" else platform
        self.threads = threads
        self.temperature = float(target.temperature)

        self.system = openmm.XmlSerializer.clone(target.system)
        used = {force.getForceGroup() for force in self.system.getForces()}
        free = [g for g in range(31, -1, -1) if g not in used]
        if not free:
            raise ConfigError("the target's system uses all 32 force groups; none is left for the restraint")
        self.restraint_group = free[0]
        self.record_groups = set(range(32)) - {self.restraint_group}

        # the atoms of φ and ψ, as the backmapper found them among the beads
        quads = self.mapping.bead_atoms[self.backmapper.torsion_beads.numpy()].tolist()
        self.restraint = openmm.CustomTorsionForce(
            f"0.5*{_K_NAME}*dtheta^2; dtheta = min(d, 2*pi - d); d = abs(theta - theta0); pi = {np.pi!r}"
        )
        self.restraint.addGlobalParameter(_K_NAME, float(restraint_kJ_mol_rad2))
        self.restraint.addPerTorsionParameter("theta0")
        for quad in quads:
            self.restraint.addTorsion(*quad, [0.0])
        self.restraint.setForceGroup(self.restraint_group)
        self.system.addForce(self.restraint)
        self._quads = quads

    @property
    def steps_per_query(self) -> int:
        return self.equilibration_steps + self.n_frames * self.frame_interval_steps

    def _context(self, seed: int) -> tuple[openmm.Context, openmm.LangevinMiddleIntegrator]:
        restrained = dataclasses.replace(self.target.molecular_system, system=self.system)
        return langevin_simulation(restrained, self.timestep_fs, self.friction_per_ps, seed, self.platform, self.threads)

    def label(self, cg_frames_nm: np.ndarray, seed: int) -> Labels:
        """Labels for CG frames (Q, n_beads, 3) nm: ≤ Q · n_frames configurations (module docstring)."""
        cg = np.asarray(cg_frames_nm, dtype=np.float64)
        if cg.ndim != 3 or cg.shape[1:] != (self.mapping.n_beads, 3):
            raise ConfigError(f"CG queries must have shape (Q, {self.mapping.n_beads}, 3), got {cg.shape}")
        start = time.perf_counter()
        n_atoms = self.mapping.n_atoms
        positions, forces, energies, query = [], [], [], []
        evaluations = 0
        if len(cg):
            torsions = self.backmapper.torsions(cg).numpy()
            structures = np.asarray(self.backmapper(cg), dtype=np.float64)
            context, integrator = self._context(seed)
            try:
                for q in range(len(cg)):
                    result = self._run_query(context, integrator, structures[q], torsions[q], seed, q)
                    evaluations += self.minimize_iterations + result[3]
                    if result[0] is None:
                        continue
                    positions.append(result[0])
                    forces.append(result[1])
                    energies.append(result[2])
                    query.append(np.full(self.n_frames, q, dtype=np.int64))
            finally:
                del context, integrator
        if positions:
            x, f = np.concatenate(positions), np.concatenate(forces)
            energy, query = np.concatenate(energies), np.concatenate(query)
        else:
            x, f = np.zeros((0, n_atoms, 3)), np.zeros((0, n_atoms, 3))
            energy, query = np.zeros(0), np.zeros(0, dtype=np.int64)
        return Labels(
            positions_nm=x,
            cg_positions_nm=self.mapping.map_positions(x),
            cg_forces_kJ_mol_nm=self.mapping.map_forces(f),
            weights=np.ones(len(x)),
            query=query,
            energies_kJ_mol=energy,
            n_energy_evaluations=int(evaluations),
            wall_s=time.perf_counter() - start,
        )

    def _run_query(self, context: openmm.Context, integrator: openmm.Integrator, structure: np.ndarray,
                   torsions: np.ndarray, seed: int, q: int):
        """(positions, forces, energies, MD steps run) of one query; arrays are None on failure."""
        first_step = context.getStepCount()
        try:
            for i, (quad, theta0) in enumerate(zip(self._quads, torsions)):
                self.restraint.setTorsionParameters(i, *quad, [float(theta0)])
            self.restraint.updateParametersInContext(context)
            context.setPositions(structure)
            if self.minimize_iterations:
                openmm.LocalEnergyMinimizer.minimize(context, MINIMIZE_TOLERANCE, self.minimize_iterations)
            context.setVelocitiesToTemperature(self.temperature * unit.kelvin, _velocity_seed(seed, q))
            integrator.step(self.equilibration_steps)
            x = np.empty((self.n_frames, structure.shape[0], 3))
            f = np.empty_like(x)
            energy = np.empty(self.n_frames)
            for k in range(self.n_frames):
                integrator.step(self.frame_interval_steps)
                state = context.getState(getPositions=True, getEnergy=True, getForces=True, groups=self.record_groups)
                x[k] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                f[k] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
                energy[k] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                if not (np.isfinite(energy[k]) and np.isfinite(x[k]).all() and np.isfinite(f[k]).all()):
                    raise FloatingPointError(f"non-finite energy, positions or forces at frame {k} (E = {energy[k]})")
        except (openmm.OpenMMException, FloatingPointError) as err:
            steps = context.getStepCount() - first_step
            log.warning("MD oracle: query %d failed after %d MD steps (%s); its frames are dropped", q, steps, err)
            return None, None, None, steps
        return x, f, energy, context.getStepCount() - first_step
