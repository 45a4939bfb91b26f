"""Plain OpenMM reference MD of a molecule: one resumable Langevin trajectory (``flowcg-reference method=md``).

Writes into its run directory:

* ``topology.pdb`` — the starting structure (topology for reading the trajectory).
* ``trajectory.dcd`` — one frame every ``save_interval_fs`` of production (Å in the file, as DCD).
* ``reference.npz`` — per frame: ``phi``, ``psi`` (rad, (−π, π]; shape (F,) for a dipeptide,
  (F, R) for a peptide of R residues, residue k's φ_k, ψ_k in column k), ``energy`` (potential,
  kJ/mol); plus the run bookkeeping (``production_start_step``, ``save_interval_steps``, ``wall_time_s``).
* ``ramachandran_reference.npz`` (a dipeptide) or ``ramachandran_reference_residue<k>.npz`` (k = 1 … R):
  the compact yardstick of :class:`~flowcg.analysis.ramachandran.RamachandranReference` (the same
  files the biased walkers write), its noise floor the disagreement of the two halves in time.
* ``checkpoint.chk`` — OpenMM checkpoint (positions, velocities, step count, integrator RNG).
* ``metrics.json`` — ns simulated, frames, wall time, steps/s, ns/day, basin populations and the
  half-vs-half Ramachandran KL (the reference's own noise floor, see docs/metrics.md); per residue
  (``res<k>_…``) for a peptide.

Resuming. Frames are produced in chunks of ``chunk_ps``. After each chunk the frames are appended
to the DCD, then checkpoint and ``reference.npz`` are written to temporary files and moved into
place with ``os.replace`` (checkpoint first, npz last, so the npz is the commit record). Running
again with the same directory loads the checkpoint, checks it matches the npz frame count, trims
any DCD frames beyond it (a crash after the DCD append) and continues until ``ns`` is reached.

Dynamics: LangevinMiddleIntegrator (``timestep_fs``, ``friction_per_ps``, the target's
temperature), no constraints, after a local energy minimisation and ``equilibration_ps`` of
unsaved equilibration. OpenMM reads a seed of 0 as "pick one at random", so config seed s is
passed to OpenMM as s + 1 (``systems.openmm_seed``, for velocities and the integrator's noise), keeping runs
reproducible.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import mdtraj as md
import numpy as np
import openmm
from openmm import app, unit

from flowcg.analysis.ramachandran import RamachandranReference, basin_populations, ramachandran_kl, reference_paths, residue_phi_psi, residue_prefix, residue_torsion_atoms
from flowcg.errors import ConfigError, UnreadableFileError
from flowcg.io import load_npz, save_json_atomic, save_npz_atomic, write_atomic
from flowcg.targets.openmm_bridge import available_platforms, default_platform
from flowcg.targets.systems import MolecularSystem, langevin_simulation, thermalize

__all__ = ["ReferenceRun"]


def _dcd_frames(path: Path, topology_pdb: Path) -> np.ndarray:
    return md.load_dcd(str(path), top=str(topology_pdb)).xyz if path.exists() else np.zeros((0, 0, 3))


class ReferenceRun:
    """A resumable Langevin MD run of ``system`` in ``run_dir`` (see the module docstring)."""

    def __init__(self, system: MolecularSystem, run_dir: Path, *, seed: int = 0, timestep_fs: float = 1.0,
                 friction_per_ps: float = 1.0, save_interval_fs: float = 1000.0, chunk_ps: float = 100.0,
                 equilibration_ps: float = 10.0, platform: str = "auto", threads: int | None = None):
        self.system = system
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        names = ("topology.pdb", "trajectory.dcd", "checkpoint.chk", "reference.npz", "metrics.json")
        self.paths = {name: self.run_dir / name for name in names}
        self.timestep_ps = timestep_fs / 1000.0
        self.save_interval_steps = max(1, round(save_interval_fs / timestep_fs))
        self.chunk_frames = max(1, round(chunk_ps * 1000.0 / save_interval_fs))
        self.equilibration_steps = round(equilibration_ps * 1000.0 / timestep_fs)
        self.seed = int(seed)
        self.n_residues = len(residue_torsion_atoms(system.topology))

        if platform != "auto" and platform not in available_platforms():
            raise ConfigError(f"unknown OpenMM platform '{platform}'; available: auto, {', '.join(available_platforms())}")
        self.platform = openmm.Platform.getPlatformByName(default_platform() if platform == "auto" else platform)
        self.context, self.integrator = langevin_simulation(system, timestep_fs, friction_per_ps, self.seed, self.platform, threads)
        self.records = self._restore() if self.paths["checkpoint.chk"].exists() else self._start()

    def _start(self) -> dict:
        """Minimise, thermalise, equilibrate; write topology.pdb; return empty records."""
        thermalize(self.context, self.system, self.seed)
        self.integrator.step(self.equilibration_steps)
        with open(self.paths["topology.pdb"], "w") as handle:
            app.PDBFile.writeFile(self.system.omm_topology, self.system.positions * unit.nanometer, handle)
        self.paths["trajectory.dcd"].unlink(missing_ok=True)
        return {
            "phi": self._no_torsions(), "psi": self._no_torsions(), "energy": np.zeros(0),
            "production_start_step": self.context.getStepCount(),
            "save_interval_steps": self.save_interval_steps,
            "wall_time_s": 0.0,
        }

    def _no_torsions(self) -> np.ndarray:
        return np.zeros(0) if self.n_residues == 1 else np.zeros((0, self.n_residues))

    def _restore(self) -> dict:
        """Load checkpoint and npz, check they agree, trim the DCD to the committed frames."""
        self.context.loadCheckpoint(self.paths["checkpoint.chk"].read_bytes())
        records = load_npz(self.paths["reference.npz"], what="reference record")
        if int(records["save_interval_steps"]) != self.save_interval_steps:
            raise ConfigError(f"{self.run_dir}: save interval differs from the run being resumed")
        frames = len(records["phi"])
        step = self.context.getStepCount()
        if step != int(records["production_start_step"]) + frames * self.save_interval_steps:
            raise UnreadableFileError(f"{self.run_dir}: checkpoint at step {step} does not match {frames} saved frames")
        dcd = _dcd_frames(self.paths["trajectory.dcd"], self.paths["topology.pdb"])
        if len(dcd) < frames:
            raise UnreadableFileError(f"{self.run_dir}: trajectory.dcd holds {len(dcd)} frames, reference.npz {frames}")
        if len(dcd) > frames:  # a crash between the DCD append and the commit: drop the uncommitted frames
            trimmed = self.paths["trajectory.dcd"].with_name("trajectory.tmp.dcd")
            trimmed.unlink(missing_ok=True)
            self._append_dcd(dcd[:frames], trimmed)
            os.replace(trimmed, self.paths["trajectory.dcd"])
        return records

    def _append_dcd(self, positions_nm: np.ndarray, path: Path | None = None) -> None:
        """Append frames (F, N, 3) nm to ``path`` (default trajectory.dcd; created if absent)."""
        path = path or self.paths["trajectory.dcd"]
        exists = path.exists() and path.stat().st_size > 0
        with open(path, "r+b" if exists else "wb") as handle:
            dcd = app.DCDFile(
                handle, self.system.omm_topology, self.timestep_ps * unit.picosecond,
                interval=self.save_interval_steps, append=exists,
            )
            for frame in positions_nm:
                dcd.writeModel(frame * unit.nanometer)

    @property
    def n_frames(self) -> int:
        return len(self.records["phi"])

    def run(self, ns: float) -> dict:
        """Simulate until ``ns`` of production are saved; return (and write) the metrics."""
        target = round(ns * 1000.0 / (self.save_interval_steps * self.timestep_ps))
        start_frames, started = self.n_frames, time.perf_counter()
        while self.n_frames < target:
            n = min(self.chunk_frames, target - self.n_frames)
            positions, energies = np.empty((n, self.system.n_atoms, 3)), np.empty(n)
            for i in range(n):
                self.integrator.step(self.save_interval_steps)
                state = self.context.getState(getPositions=True, getEnergy=True)
                positions[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            phi, psi = residue_phi_psi(positions, self.system.topology)
            if self.n_residues == 1:
                phi, psi = phi[:, 0], psi[:, 0]
            self._append_dcd(positions)
            self.records.update(
                phi=np.concatenate([self.records["phi"], phi]),
                psi=np.concatenate([self.records["psi"], psi]),
                energy=np.concatenate([self.records["energy"], energies]),
                wall_time_s=float(self.records["wall_time_s"]) + time.perf_counter() - started,
            )
            started = time.perf_counter()
            self._commit()
        metrics = self.metrics(self.n_frames - start_frames)
        for reference, path in zip(self.ramachandran_references(), reference_paths(self.run_dir, self.n_residues)):
            reference.save(path)
        save_json_atomic(metrics, self.paths["metrics.json"])
        return metrics

    def _torsions(self) -> tuple[np.ndarray, np.ndarray]:
        """Recorded φ, ψ as (F, R)."""
        return tuple(np.asarray(self.records[k]).reshape(self.n_frames, self.n_residues) for k in ("phi", "psi"))

    def ramachandran_references(self) -> list[RamachandranReference]:
        """Per residue, the trajectory's (φ_k, ψ_k) as a compact yardstick, the first half in time
        against the second as its noise floor."""
        if not self.n_frames:
            return []
        phi, psi = self._torsions()
        first_half = np.arange(self.n_frames) < self.n_frames // 2
        length_ns = self.n_frames * self.save_interval_steps * self.timestep_ps / 1000.0
        return [RamachandranReference.from_frames(
            phi[:, k], psi[:, k], None, self.system.temperature,
            f"plain OpenMM MD, {length_ns:g} ns ({self.system.name}, {self.system.temperature:g} K"
            f"{'' if self.n_residues == 1 else f', residue {k + 1} of {self.n_residues}'})", halves=first_half)
            for k in range(self.n_residues)]

    def _commit(self) -> None:
        checkpoint = self.context.createCheckpoint()
        write_atomic(self.paths["checkpoint.chk"], lambda handle: handle.write(checkpoint))
        save_npz_atomic(self.paths["reference.npz"], **self.records)

    def metrics(self, new_frames: int) -> dict:
        """Run summary: length, cost, speed, basin populations and the half-vs-half KL64."""
        frames = self.n_frames
        steps = frames * self.save_interval_steps
        wall = float(self.records["wall_time_s"])
        half = frames // 2
        metrics = {
            "target": self.system.name,
            "temperature_K": self.system.temperature,
            "platform": self.platform.getName(),
            "frames": frames,
            "ns": steps * self.timestep_ps / 1000.0,
            "production_steps": steps,
            "wall_time_s": wall,
            "steps_per_s": steps / wall if wall > 0 else None,
            "ns_per_day": steps * self.timestep_ps / 1000.0 / wall * 86400 if wall > 0 else None,
            "frames_this_session": new_frames,
        }
        if frames:
            metrics["mean_energy_kj_mol"] = float(np.mean(self.records["energy"]))
        phi, psi = self._torsions()
        for k in range(self.n_residues if frames else 0):
            prefix = residue_prefix(k, self.n_residues)
            metrics.update({f"{prefix}basin_{name}": p for name, p in basin_populations(phi[:, k], psi[:, k]).items()})
            if half >= 1:
                metrics[f"{prefix}kl_64_half_vs_half"] = ramachandran_kl(phi[:half, k], psi[:half, k], phi[half:, k], psi[half:, k], bins=64)
        return metrics
