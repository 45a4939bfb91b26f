"""Reference sampling by many biased MD walkers at once: metadynamics on (φ, ψ), then a frozen bias.

Why. Plain MD of alanine dipeptide in implicit solvent crosses to the φ > 0 basins (αL, C7ax)
about once in tens of ns, so a one-core reference of tens of ns cannot tell a Ramachandran KL of
1e-2 from 1e-1 (docs/metrics.md). Two things fix that here:

* a bias V(φ, ψ) (:class:`~flowcg.md.torsion_bias.TorsionBias`) that flattens the barriers,
  grown by multiple-walker well-tempered metadynamics and then **frozen**, so that every recorded
  frame carries the exact weight w = exp(+V(φ, ψ)/kT) back to the Boltzmann distribution;
* many walkers integrated as one batch through the torch force field, whose batched energies and
  forces (validated against OpenMM at construction) run tens of times faster per configuration
  than OpenMM's one-at-a-time evaluation. ``backend=openmm`` targets work too, more slowly.

Phases, all with BAOAB Langevin (:class:`flowcg.md.langevin.LangevinBAOAB`, the splitting of
OpenMM's LangevinMiddleIntegrator) at the target's temperature:

1. ``build``: every walker deposits a hill every ``deposit_fs`` (well-tempered heights);
2. ``equilibrate``: the bias is frozen; walkers relax in it, nothing is recorded;
3. ``production``: φ, ψ and V of every walker every ``save_interval_fs``.

Peptides with several residues (Ace-(Ala)n-Nme) get one bias per residue, V = Σ_k V_k(φ_k, ψ_k),
each grown from its own residue's torsions with its own well-tempered heights; the frozen sum
reweights exactly as before. Targets with bond constraints (``constraints=hbonds``) are integrated
with SHAKE/RATTLE (:mod:`flowcg.md.constraints`).

Replica exchange instead of a bias (``n_temperatures`` = K > 1, ``max_temperature_K``, no build):
the walkers form ladders of K temperatures that swap configurations every ``exchange_fs``
(:mod:`flowcg.md.replica_exchange`); every frame records its potential energy and bath temperature,
and the log weights back to the target's temperature come from MBAR over all of them. It is the
unbiased second method that checks a biased reference.

Files in the run folder: ``bias.npy`` (the Fourier coefficients, (2K+1, 2K+1) or one such matrix
per residue; frozen after the build), ``state.pt`` (positions, velocities, RNG state, phase, steps
done), ``reference.npz`` (per frame ``phi``, ``psi`` in rad (one column per residue; a dipeptide's
single column stored flat), ``bias_kj_mol``, ``log_weight`` = V/kT, ``walker``, ``time_ps``; with a
temperature ladder also ``potential_kj_mol`` and ``bath_temperature_K``, and ``log_weight`` from MBAR),
``ramachandran_reference.npz`` (a dipeptide) or ``ramachandran_reference_residue<k>.npz`` (k = 1 …
per residue), ``metrics.json``, and with ``positions_every`` = n > 0 ``positions.npz``: the all-atom
``positions_nm`` (float32) of every walker at every n-th recorded frame and the ``frame`` rows of
``reference.npz`` they belong to (their weights), for yardsticks beyond (φ, ψ) such as a CG ensemble. Frames are buffered in memory between commits. After each chunk
``reference.npz``, then ``bias.npy`` (only while the bias grows), then ``state.pt`` (which holds the
bias too) are replaced atomically; the state is the commit record, so a kill between the two only repeats a chunk, with the same
random numbers, and a rerun with a larger ``production_ps`` extends the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from openmm import unit
from torch import Tensor

from flowcg.analysis.ramachandran import RamachandranReference, basin_populations, reference_paths, residue_prefix, residue_torsion_atoms
from flowcg.coordinates.backbone import backbone_dihedrals
from flowcg.errors import ConfigError, UnreadableFileError
from flowcg.io import load_npz, load_torch, save_atomic, save_json_atomic, save_npz_atomic, write_atomic
from flowcg.md.constraints import BondConstraints
from flowcg.md.langevin import LangevinBAOAB
from flowcg.md.replica_exchange import TemperatureLadder, mbar_log_weights
from flowcg.md.torsion_bias import TorsionBias
from flowcg.sampling.importance import kish_ess, normalized_weights
from flowcg.targets.molecular import MolecularTarget
from flowcg.targets.systems import langevin_simulation, thermalize
from flowcg.threads import rebalance

log = logging.getLogger(__name__)

__all__ = ["WalkerSettings", "BiasedWalkers"]

PHASES = ("build", "equilibrate", "production")


@dataclass(frozen=True)
class WalkerSettings:
    """Settings of a :class:`BiasedWalkers` run (times per walker; a resumed run must keep them)."""

    n_walkers: int = 1024
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    build_ps: float = 100.0          # metadynamics, per walker (20 ps with γ = 4 left vacuum αL unconverged: RESULTS.md)
    deposit_fs: float = 100.0        # one hill per walker this often
    hill_height_kj_mol: float = 0.005  # initial height per hill; 1024 walkers deposit ~50 kJ/mol per ps
    hill_width_rad: float = 0.35
    bias_factor: float = 6.0         # γ of well-tempered metadynamics; ΔT = (γ − 1) T; the bias tends to (1 − 1/γ) F
    fourier_order: int = 12          # K ≳ 3.5 / hill width keeps hills exact to ~1e-3
    equilibration_ps: float = 20.0   # in the frozen bias, not recorded
    save_interval_fs: float = 250.0
    chunk_ps: float = 10.0           # production frames are committed this often (per walker)
    seed: int = 0
    positions_every: int = 0         # also keep all-atom positions at every n-th recorded frame (0: none), positions.npz
    n_temperatures: int = 1          # K > 1: ladders of K temperatures with replica exchange instead of a bias
    max_temperature_K: float | None = None  # the top of the geometric ladder (K > 1)
    exchange_fs: float = 1000.0      # neighbour swaps this often (K > 1); a multiple of save_interval_fs

    def __post_init__(self):
        for name in ("n_walkers", "timestep_fs", "deposit_fs", "hill_width_rad", "save_interval_fs", "chunk_ps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"walkers.{name} must be positive, got {getattr(self, name)}")
        if self.bias_factor <= 1:
            raise ConfigError(f"walkers.bias_factor must be > 1, got {self.bias_factor}")
        if min(self.build_ps, self.equilibration_ps, self.hill_height_kj_mol, self.friction_per_ps, self.positions_every) < 0:
            raise ConfigError("walkers.build_ps, equilibration_ps, hill_height_kj_mol, friction_per_ps and positions_every must be ≥ 0")
        if self.n_temperatures < 1:
            raise ConfigError(f"walkers.n_temperatures must be ≥ 1, got {self.n_temperatures}")
        if self.n_temperatures > 1:
            if self.max_temperature_K is None:
                raise ConfigError("walkers.n_temperatures > 1 needs walkers.max_temperature_K (the top of the ladder)")
            if self.build_ps > 0:
                raise ConfigError("replica exchange (walkers.n_temperatures > 1) runs without a bias: set walkers.build_ps=0")
            if self.n_walkers % self.n_temperatures:
                raise ConfigError(f"walkers.n_walkers ({self.n_walkers}) must be a multiple of walkers.n_temperatures ({self.n_temperatures})")
            if self.exchange_fs <= 0 or self.steps(self.exchange_fs) % self.steps(self.save_interval_fs):
                raise ConfigError(f"walkers.exchange_fs ({self.exchange_fs}) must be a positive multiple of walkers.save_interval_fs ({self.save_interval_fs})")

    def steps(self, fs: float) -> int:
        return max(1, round(fs / self.timestep_fs))


class BiasedWalkers:
    """A resumable multiple-walker biased MD run of ``target`` in ``run_dir`` (see the module docstring)."""

    def __init__(self, target: MolecularTarget, run_dir: str | Path, settings: WalkerSettings):
        self.target, self.settings = target, settings
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {name: self.run_dir / name for name in ("bias.npy", "state.pt", "reference.npz", "metrics.json", "positions.npz")}
        # (R, 2, 4): the φ and ψ atoms of every residue
        self.torsion_atoms = torch.as_tensor(residue_torsion_atoms(target.topology), dtype=torch.long)
        self.n_residues = len(self.torsion_atoms)
        masses = [target.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(target.system.getNumParticles())]
        constraints = getattr(target, "constraints", ())
        self.integrator = LangevinBAOAB(
            self._forces, masses, timestep_ps=settings.timestep_fs / 1000.0, friction_per_ps=settings.friction_per_ps,
            temperature_K=target.temperature, min_distance=None,
            constraints=BondConstraints(constraints, masses) if constraints else None,
        )
        self.kT = target.kT  # kJ/mol
        self.ladder = (TemperatureLadder(target.temperature, settings.max_temperature_K, settings.n_temperatures)
                       if settings.n_temperatures > 1 else None)
        self.walker_temperatures_K = self.ladder.walker_temperatures_K(settings.n_walkers) if self.ladder else None
        self.record_keys = ("phi", "psi", "bias_kj_mol", "walker", "time_ps") + (("potential_kj_mol", "bath_temperature_K") if self.ladder else ())
        self._log_weight_cache: tuple[int, np.ndarray] | None = None
        self.dtype = torch.float32 if target.forcefield is None else target.forcefield.dtype
        if self.paths["state.pt"].exists():
            self._restore()
        else:
            self._start()

    # ---- state -------------------------------------------------------------------------------

    def _start(self) -> None:
        context, _ = langevin_simulation(self.target.molecular_system, seed=self.settings.seed, threads=1)
        thermalize(context, self.target.molecular_system, self.settings.seed)  # minimised start for every walker
        x0 = torch.as_tensor(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        self.x = x0.to(self.dtype).expand(self.settings.n_walkers, -1, -1).contiguous()
        self.generator = torch.Generator().manual_seed(self.settings.seed)
        self.v = self.integrator.maxwell_boltzmann(self.settings.n_walkers, self.generator, self.x, self.walker_temperatures_K)
        self.alive = torch.ones(self.settings.n_walkers, dtype=torch.bool)
        self.steps_done = dict.fromkeys(PHASES, 0)
        self.biases = [TorsionBias.zeros(self.settings.fourier_order) for _ in range(self.n_residues)]
        self.wall_time_s = 0.0
        torsion_shape = (0,) if self.n_residues == 1 else (0, self.n_residues)
        self.records = {"phi": np.zeros(torsion_shape, np.float32), "psi": np.zeros(torsion_shape, np.float32),
                        "bias_kj_mol": np.zeros(0, np.float32), "walker": np.zeros(0, np.int32), "time_ps": np.zeros(0, np.float32)}
        if self.ladder:
            self.records.update(potential_kj_mol=np.zeros(0, np.float64), bath_temperature_K=np.zeros(0, np.float64))
        self.exchanges = self._no_exchanges()
        self.pending: list[dict] = []
        self.positions = self._no_positions()

    def _no_exchanges(self) -> dict[str, np.ndarray]:
        """Swap counts per neighbour pair (k, k+1) of the ladder: tried, accepted."""
        pairs = self.settings.n_temperatures - 1
        return {"attempted": np.zeros(pairs, np.int64), "accepted": np.zeros(pairs, np.int64)}

    def _no_positions(self) -> dict[str, np.ndarray]:
        return {"positions_nm": np.zeros((0, self.target.system.getNumParticles(), 3), np.float32), "frame": np.zeros(0, np.int64)}

    def _restore(self) -> None:
        state = load_torch(self.paths["state.pt"], what="walker state")
        saved = {**asdict(WalkerSettings()), **state["settings"]}  # a setting added since the run began has its default
        if saved != asdict(self.settings):
            changed = sorted(k for k, v in asdict(self.settings).items() if saved.get(k) != v)
            raise ConfigError(f"{self.run_dir}: walker settings differ from the run being resumed ({', '.join(changed)})")
        self.x, self.v, self.alive = state["x"], state["v"], state["alive"]
        self.generator = torch.Generator()
        self.generator.set_state(state["rng"])
        self.steps_done, self.wall_time_s = state["steps_done"], state["wall_time_s"]
        coefficients = state["bias"]
        self.biases = [TorsionBias(c) for c in (coefficients[None] if coefficients.ndim == 2 else coefficients)]
        if len(self.biases) != self.n_residues:
            raise UnreadableFileError(f"{self.run_dir}: state.pt holds {len(self.biases)} residue biases, the target has {self.n_residues}")
        frames = state["frames"]
        with np.load(self.paths["reference.npz"]) as data:
            self.records = {key: data[key][:frames] for key in self.record_keys}
        if len(self.records["phi"]) != frames:
            raise UnreadableFileError(f"{self.run_dir}: reference.npz holds {len(self.records['phi'])} frames, state.pt {frames}")
        kept = state.get("position_frames", 0)
        self.positions = self._no_positions()
        if kept:
            data = load_npz(self.paths["positions.npz"], what="walker positions", keys=["positions_nm", "frame"])
            self.positions = {key: data[key][:kept] for key in self.positions}
            if len(self.positions["frame"]) != kept:
                raise UnreadableFileError(f"{self.run_dir}: positions.npz holds {len(self.positions['frame'])} frames, state.pt {kept}")
        self.exchanges = {k: np.asarray(v).copy() for k, v in state.get("exchanges", self._no_exchanges()).items()}
        self.pending = []
        log.info("resumed %s: %s steps done, %d frames", self.run_dir, self.steps_done, frames)

    def log_weights(self) -> np.ndarray:
        """log w of every recorded frame back to the target: V(φ, ψ) / kT for a biased run, MBAR over
        the ladder's temperatures for replica exchange (cached per frame count: MBAR takes seconds)."""
        if not self.ladder:
            return self.records["bias_kj_mol"].astype(np.float64) / self.kT
        frames = len(self.records["walker"])
        if self._log_weight_cache is None or self._log_weight_cache[0] != frames:
            log_w = (mbar_log_weights(self.records["potential_kj_mol"], self.records["bath_temperature_K"], self.target.temperature)
                     if frames else np.zeros(0))
            self._log_weight_cache = (frames, log_w)
        return self._log_weight_cache[1]

    def _commit(self, phase: str) -> None:
        """Frames recorded since the last commit join the records; reference.npz, then (while the bias
        still changes) bias.npy, then state.pt are replaced atomically."""
        positions = [frame["positions"] for frame in self.pending if "positions" in frame]
        if self.pending:
            self.records = {k: np.concatenate([self.records[k], *(frame[k] for frame in self.pending)]) for k in self.records}
            self.pending = []
        save_npz_atomic(self.paths["reference.npz"], **self.records, log_weight=self.log_weights(), temperature_K=self.target.temperature)
        if positions:  # rewritten only when it grows (most commits add none)
            self.positions = {k: np.concatenate([self.positions[k], *(p[k] for p in positions)]) for k in self.positions}
            save_npz_atomic(self.paths["positions.npz"], **self.positions)
        coefficients = self._bias_coefficients()
        if phase == "build" or not self.paths["bias.npy"].exists():
            write_atomic(self.paths["bias.npy"], lambda handle: np.save(handle, coefficients.numpy()))
        save_atomic({
            "settings": asdict(self.settings), "x": self.x, "v": self.v, "alive": self.alive, "rng": self.generator.get_state(),
            "steps_done": self.steps_done, "wall_time_s": self.wall_time_s, "bias": coefficients,
            "frames": len(self.records["phi"]), "position_frames": len(self.positions["frame"]),
            "exchanges": {k: torch.from_numpy(v) for k, v in self.exchanges.items()},
        }, self.paths["state.pt"])

    # ---- dynamics ----------------------------------------------------------------------------

    def _bias_coefficients(self) -> Tensor:
        """The Fourier coefficients, (2K+1, 2K+1) for a dipeptide, else (R, 2K+1, 2K+1)."""
        stacked = torch.stack([b.coefficients for b in self.biases])
        return (stacked[0] if self.n_residues == 1 else stacked).clone()

    def torsions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """φ, ψ in rad of positions x (B, N, 3) nm, each (B, R)."""
        return backbone_dihedrals(x, self.torsion_atoms)

    def bias(self, phi: Tensor, psi: Tensor) -> Tensor:
        """V = Σ_k V_k(φ_k, ψ_k) in kJ/mol, (B,), at torsions (B, R) (or (B,) for a dipeptide, as recorded)."""
        phi, psi = phi.reshape(len(phi), -1), psi.reshape(len(psi), -1)
        return sum(b(phi[:, k], psi[:, k]) for k, b in enumerate(self.biases))

    def _forces(self, x: Tensor) -> Tensor:
        """−∇(U + V) in kJ/(mol nm): force field plus the current bias on the backbone torsions."""
        _, forces = self.target.energy_and_forces(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            bias_grad, = torch.autograd.grad(self.bias(*self.torsions(xg)).sum(), xg)
        return forces - bias_grad

    def _advance(self, n_steps: int) -> None:
        """Integrate the live walkers by ``n_steps``; a walker that blows up is stopped, logged and left out from then on."""
        live = torch.nonzero(self.alive).squeeze(1)
        temperatures = self.walker_temperatures_K[live] if self.ladder else None
        result = self.integrator.run(self.x[live], n_steps, save_every=n_steps, seed=self.generator, v0=self.v[live], temperature_K=temperatures)
        self.x[live], self.v[live] = result.positions, result.velocities
        for local in result.stopped.tolist():
            log.warning("walker %d stopped (%s); it records no further frames", int(live[local]), result.stop_reason[local])
            self.alive[live[local]] = False

    def _exchange(self, parity: int) -> None:
        """Neighbour swaps in every ladder (pairs k ≡ parity mod 2), at the current potential energies."""
        with torch.no_grad():
            energy, _ = self.target.energy_and_forces(self.x)
        self.x, self.v, accepted = self.ladder.exchange(self.x, self.v, energy, self.alive, parity, self.generator)
        self.exchanges["attempted"][parity::2] += self.settings.n_walkers // self.settings.n_temperatures
        self.exchanges["accepted"] += accepted.numpy()

    def _deposit(self) -> None:
        """Well-tempered hills at every live walker, per residue k: h = h₀ exp(−V_k / (k_B ΔT)), ΔT = (γ − 1) T."""
        with torch.no_grad():
            phi, psi = (t.double() for t in self.torsions(self.x[self.alive]))
            delta_kT = (self.settings.bias_factor - 1.0) * self.kT
            for k, bias in enumerate(self.biases):
                heights = self.settings.hill_height_kj_mol * torch.exp(-bias(phi[:, k], psi[:, k]) / delta_kT)
                bias.add_hills(phi[:, k], psi[:, k], heights, self.settings.hill_width_rad)

    def _record(self) -> None:
        with torch.no_grad():
            walkers = torch.nonzero(self.alive).squeeze(1)
            phi, psi = self.torsions(self.x[walkers].double())
            flat = self.n_residues == 1  # a dipeptide's single column is stored flat (the reference.npz format)
            values = {"phi": phi[:, 0] if flat else phi, "psi": psi[:, 0] if flat else psi, "bias_kj_mol": self.bias(phi, psi)}
        new = {k: v.numpy().astype(np.float32) for k, v in values.items()}
        if self.ladder:
            with torch.no_grad():
                energy, _ = self.target.energy_and_forces(self.x[walkers])
            new["potential_kj_mol"] = energy.double().numpy()
            new["bath_temperature_K"] = self.walker_temperatures_K[walkers].numpy()
        time_ps = self.steps_done["production"] * self.settings.timestep_fs / 1000.0
        new["walker"] = walkers.numpy().astype(np.int32)
        new["time_ps"] = np.full(len(walkers), time_ps, np.float32)
        every = self.settings.positions_every
        record_index = self.steps_done["production"] // self.settings.steps(self.settings.save_interval_fs) - 1
        if every and record_index % every == 0:
            first_row = len(self.records["phi"]) + sum(len(frame["walker"]) for frame in self.pending)
            new["positions"] = {"positions_nm": self.x[walkers].numpy().astype(np.float32),
                                "frame": np.arange(first_row, first_row + len(walkers), dtype=np.int64)}
        self.pending.append(new)

    def run(self, production_ps: float) -> dict:
        """Run the phases until ``production_ps`` of production per walker are recorded; return the metrics."""
        s = self.settings
        targets = {"build": s.steps(s.build_ps * 1000.0) if s.build_ps else 0,
                   "equilibrate": s.steps(s.equilibration_ps * 1000.0) if s.equilibration_ps else 0,
                   "production": s.steps(production_ps * 1000.0)}
        exchange_steps = s.steps(s.exchange_fs)
        stride = {"build": s.steps(s.deposit_fs),
                  # with a ladder, every exchange time is a stride end (a shorter chunk could skip some); commits still follow chunk_ps
                  "equilibrate": exchange_steps if self.ladder else s.steps(s.chunk_ps * 1000.0),
                  "production": s.steps(s.save_interval_fs)}
        chunk_steps = s.steps(s.chunk_ps * 1000.0)
        for phase in PHASES:
            started, last_commit = time.perf_counter(), self.steps_done[phase]
            while self.steps_done[phase] < targets[phase]:
                n = min(stride[phase], targets[phase] - self.steps_done[phase])
                self._advance(n)
                self.steps_done[phase] += n
                if phase == "build":
                    self._deposit()
                if self.ladder and phase != "build" and self.steps_done[phase] % exchange_steps == 0:
                    rounds = sum(self.steps_done[p] // exchange_steps for p in ("equilibrate", "production"))
                    self._exchange(parity=rounds % 2)
                if phase == "production" and n == stride[phase]:
                    self._record()
                if self.steps_done[phase] - last_commit >= chunk_steps or self.steps_done[phase] >= targets[phase]:
                    self.wall_time_s += time.perf_counter() - started
                    started, last_commit = time.perf_counter(), self.steps_done[phase]
                    self._commit(phase)
                    rebalance()  # another flowcg process may have started or ended since (flowcg.threads)
                    log.info("%s: %.1f of %.1f ps per walker (%d walkers live), %.0f s", phase,
                             self.steps_done[phase] * s.timestep_fs / 1000.0, targets[phase] * s.timestep_fs / 1000.0,
                             int(self.alive.sum()), self.wall_time_s)
        references = self.ramachandran_references() if len(self.records["phi"]) else None
        for path, reference in zip(reference_paths(self.run_dir, self.n_residues), references or ()):
            reference.save(path)
        metrics = self.metrics(references)
        save_json_atomic(metrics, self.paths["metrics.json"])
        return metrics

    def ramachandran_references(self) -> list[RamachandranReference]:
        """Per residue, the reweighted frames' (φ_k, ψ_k) as a compact yardstick (histograms, basins),
        with the disagreement of two independent halves of the walkers (not of time) as its noise floor."""
        r, weights = self.records, normalized_weights(self.log_weights())
        phi, psi = self._recorded_torsions()
        length_ps = self.steps_done["production"] * self.settings.timestep_fs / 1000.0
        return [RamachandranReference.from_frames(
            phi[:, k], psi[:, k], weights, self.target.temperature,
            f"{self._description()} x {length_ps:g} ps ({self.target.name}, {self.target.temperature:g} K"
            f"{'' if self.n_residues == 1 else f', residue {k + 1} of {self.n_residues}'}), reweighted",
            halves=self._first_half(r["walker"])) for k in range(self.n_residues)]

    def _description(self) -> str:
        s = self.settings
        if not self.ladder:
            return f"{s.n_walkers} biased walkers"
        return (f"replica exchange, {s.n_walkers // s.n_temperatures} ladders of {s.n_temperatures} temperatures "
                f"{self.target.temperature:g}-{s.max_temperature_K:g} K (MBAR),")

    def _first_half(self, walker: np.ndarray) -> np.ndarray:
        """Whether each frame's walker is in the first half of the independent runs (walkers, or whole ladders)."""
        per_run = self.settings.n_temperatures
        return walker // per_run < (self.settings.n_walkers // per_run) // 2

    def metrics(self, references: list[RamachandranReference] | None = None) -> dict:
        """Run summary: aggregate length and speed, weight ESS, reweighted basins, walker-split KL / TV
        (per residue ``res<k>_…`` for peptides; ``references``: :meth:`ramachandran_references`, if
        already computed)."""
        s, r = self.settings, self.records
        steps = sum(self.steps_done.values())
        aggregate_ns = steps * s.timestep_fs * 1e-6 * s.n_walkers
        log_w = self.log_weights()
        bias_ranges = [float(grid.max() - grid.min()) for grid in (b.grid(72) for b in self.biases)]
        metrics = {
            "target": self.target.name, "temperature_K": self.target.temperature, "backend": self.target.backend,
            "settings": asdict(s), "frames": int(len(r["phi"])), "walkers_live": int(self.alive.sum()),
            "ps_per_walker": {phase: n * s.timestep_fs / 1000.0 for phase, n in self.steps_done.items()},
            "production_ns_aggregate": self.steps_done["production"] * s.timestep_fs * 1e-6 * s.n_walkers,
            "ns_aggregate": aggregate_ns, "wall_time_s": self.wall_time_s,
            "ns_per_day_aggregate": aggregate_ns / self.wall_time_s * 86400 if self.wall_time_s > 0 else None,
            "bias_max_kj_mol": max(bias_ranges),  # the largest residue bias's range, its minimum taken as 0
        }
        if self.ladder:
            metrics["temperatures_K"] = self.ladder.temperatures_K.tolist()
            metrics["exchange_acceptance"] = (self.exchanges["accepted"] / np.maximum(self.exchanges["attempted"], 1)).tolist()
        if len(log_w):
            references = references or self.ramachandran_references()
            metrics["weight_ess"] = kish_ess(log_w)
            for k, reference in enumerate(references):
                prefix = residue_prefix(k, self.n_residues)
                metrics.update({f"{prefix}basin_{name}": v for name, v in reference.basins.items()})
                metrics.update({f"{prefix}{name}_walker_halves": v for name, v in reference.noise_floor.items()})
            metrics.update(self._time_halves())
            metrics.update(self._basin_standard_errors())
            if self.ladder:
                metrics.update(self._target_temperature_basins())
        return metrics

    def _basin_standard_errors(self, n_groups: int = 16) -> dict:
        """Standard error of every reweighted basin share (``basin_<b>_standard_error``) from the
        spread of ``n_groups`` disjoint groups of walkers (whole ladders with replica exchange), each
        group's share weighted within the group: the groups are independent runs, so this counts
        the correlation in time that a per-frame error would miss."""
        runs = self.records["walker"] // self.settings.n_temperatures
        n_runs = self.settings.n_walkers // self.settings.n_temperatures
        if n_runs < n_groups:
            return {}
        group = runs * n_groups // n_runs
        log_w, (phi, psi) = self.log_weights(), self._recorded_torsions()
        out = {}
        for k in range(self.n_residues):
            shares = [basin_populations(phi[group == g, k], psi[group == g, k], normalized_weights(log_w[group == g]))
                      for g in range(n_groups)]
            prefix = residue_prefix(k, self.n_residues)
            for name in shares[0]:
                values = np.array([share[name] for share in shares])
                out[f"{prefix}basin_{name}_standard_error"] = float(values.std(ddof=1) / np.sqrt(n_groups))
        return out

    def _target_temperature_basins(self) -> dict:
        """The basins of the frames recorded at the target's temperature alone, unweighted
        (``basin_<b>_target_temperature_frames``): replica exchange's estimator without MBAR."""
        at_target = self.records["bath_temperature_K"] == self.ladder.temperatures_K[0].item()
        phi, psi = self._recorded_torsions()
        out = {}
        for k in range(self.n_residues):
            reference = RamachandranReference.from_frames(phi[at_target, k], psi[at_target, k])
            prefix = residue_prefix(k, self.n_residues)
            out.update({f"{prefix}basin_{name}_target_temperature_frames": v for name, v in reference.basins.items()})
        return out

    def _time_halves(self) -> dict:
        """The first half of the production against the second, per residue: KL / TV and the basins
        of each half (``…_time_halves``, ``basin_<b>_first_half`` / ``_second_half``). The walker
        halves share their history (one start, one bias), so they cannot see a drift in time; these
        can (the vacuum run's φ > 0 weight doubled from the first half to the second)."""
        weights, time_ps = normalized_weights(self.log_weights()), self.records["time_ps"]
        late = time_ps >= np.median(time_ps)
        if late.all() or not late.any():
            return {}
        phi, psi = self._recorded_torsions()
        out = {}
        for k in range(self.n_residues):
            prefix = residue_prefix(k, self.n_residues)
            halves = {half: RamachandranReference.from_frames(phi[mask, k], psi[mask, k], weights[mask])
                      for half, mask in (("first_half", ~late), ("second_half", late))}
            floor = halves["second_half"].disagreement(halves["first_half"])
            out.update({f"{prefix}{name}_time_halves": v for name, v in floor.items()})
            for half, reference in halves.items():
                out.update({f"{prefix}basin_{name}_{half}": v for name, v in reference.basins.items()})
        return out

    def _recorded_torsions(self) -> tuple[np.ndarray, np.ndarray]:
        """The recorded φ, ψ, each (frames, R)."""
        return tuple(self.records[k].reshape(len(self.records[k]), -1) for k in ("phi", "psi"))
