"""Batched Langevin dynamics (BAOAB) of many replicas at once (CG models, all-atom walkers), stopping replicas that blow up.

Units: positions nm, velocities nm/ps, time ps, masses amu, forces kJ/mol/nm, kT = R T in
kJ/mol. They are consistent without conversion factors because 1 amu nm²/ps² = 1 kJ/mol, so
F / m is in nm/ps² and kT / m in nm²/ps².

One step of the BAOAB splitting (Leimkuhler & Matthews 2013) with timestep Δt, friction γ:

    B: v ← v + (Δt/2) F(x) / m
    A: x ← x + (Δt/2) v
    O: v ← c₁ v + c₂ √(kT/m) ξ,    c₁ = exp(−γ Δt), c₂ = √(1 − c₁²), ξ ~ N(0, 1)
    A: x ← x + (Δt/2) v
    B: v ← v + (Δt/2) F(x) / m

Its configurational distribution is exact for a harmonic potential at any stable Δt and
accurate to O(Δt²) in general, which is why it is the default for sampling. With fixed bond
lengths (``constraints``, :class:`~flowcg.md.constraints.BondConstraints`) every A step is followed
by a SHAKE projection and the velocity correction Δx / (Δt/2), and every velocity change by a
RATTLE projection (constrained BAOAB, Leimkuhler & Matthews 2016).

Stopping. A learned CG potential can be wrong far from its data: a replica may collapse or
fly apart, and NaNs would otherwise spread through any batch-wide statistic. After every step
each replica is checked (finite positions and forces, largest bead force ≤ ``max_force``,
largest bead displacement in the step ≤ ``max_displacement``, closest bead pair ≥
``min_distance``, constraints restored). A replica that fails is frozen at its last good state and never integrated
again; the others carry on. The noise ξ is drawn for all replicas every step, so a live
replica's trajectory does not depend on whether others were stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from flowcg.errors import ConfigError
from flowcg.md.constraints import BondConstraints
from flowcg.units import kT

__all__ = ["LangevinBAOAB", "LangevinResult"]

ForceFn = Callable[[Tensor], Tensor]


@dataclass
class LangevinResult:
    """Output of :meth:`LangevinBAOAB.run`.

    Attributes:
        frames: (n_saved, B, n_beads, 3) positions in nm after every ``save_every`` steps (step
            ``save_every``, 2 ``save_every``, …; the start is not included). A stopped replica
            keeps its last good positions: select frames with ``alive``.
        alive: (n_saved, B) whether each replica was still running at that frame.
        positions, velocities: (B, n_beads, 3) final state (nm, nm/ps); for a stopped replica the
            last good state (its starting state if it failed the check at step 0).
        stopped_step: (B,) step at which each replica failed (0: already at the start), −1 if never.
        stop_reason: per replica, the failed check (``"non-finite"``, ``"force"``,
            ``"displacement"``, ``"overlap"``, ``"constraints"``), or ``""``.
    """

    frames: Tensor
    alive: Tensor
    positions: Tensor
    velocities: Tensor
    stopped_step: Tensor
    stop_reason: list[str]

    @property
    def stopped(self) -> Tensor:
        """Indices of the replicas that were stopped."""
        return torch.nonzero(self.stopped_step >= 0).squeeze(1)


class LangevinBAOAB:
    """BAOAB Langevin integrator for a batch of replicas (see the module docstring).

    Args:
        force_fn: X (b, n_beads, 3) nm → forces (b, n_beads, 3) kJ/mol/nm for any sub-batch b
            (e.g. ``CGSchNet.forces``); called on all replicas at the start, then only on the
            ones still running. Replicas must not interact through it (no batch statistics).
            Put a CGSchNet in ``eval()`` mode first, or every force call builds a second-order graph.
        masses_amu: (n_beads,) bead masses in amu (e.g. ``CGMapping.masses``).
        timestep_ps: Δt in ps.
        friction_per_ps: γ in 1/ps.
        temperature_K: bath temperature in K.
        max_force: largest allowed bead force norm in kJ/mol/nm (None: no check).
        max_displacement: largest allowed bead move in one step, in nm (None: no check).
        min_distance: smallest allowed bead–bead distance in nm (None: no check).
        constraints: fixed bond lengths (None: every coordinate free); the starting positions must satisfy them.
    """

    def __init__(
        self,
        force_fn: ForceFn,
        masses_amu,
        timestep_ps: float = 0.002,
        friction_per_ps: float = 1.0,
        temperature_K: float = 300.0,
        max_force: float | None = 1.0e5,
        max_displacement: float | None = 0.05,
        min_distance: float | None = 0.05,
        constraints: BondConstraints | None = None,
    ):
        masses = torch.as_tensor(masses_amu, dtype=torch.float64)
        if masses.ndim != 1 or not bool((masses > 0).all()):
            raise ConfigError(f"masses_amu must be a positive vector (n_beads,), got {masses.tolist()}")
        if timestep_ps <= 0 or friction_per_ps < 0 or temperature_K <= 0:
            raise ConfigError("need timestep_ps > 0, friction_per_ps ≥ 0 and temperature_K > 0")
        self.force_fn = force_fn
        self.masses = masses
        self.timestep = float(timestep_ps)
        self.friction = float(friction_per_ps)
        self.kT = kT(temperature_K)
        self.max_force = max_force
        self.max_displacement = max_displacement
        self.min_distance = min_distance
        self.constraints = constraints

    def maxwell_boltzmann(self, n_replicas: int, generator: torch.Generator, like: Tensor, temperature_K: Tensor | None = None) -> Tensor:
        """Velocities (B, n_beads, 3) in nm/ps drawn from exp(−m v² / 2kT), at the bath temperature
        or at a temperature (B,) in K per replica."""
        noise = torch.randn((n_replicas, self.masses.numel(), 3), generator=generator, dtype=like.dtype, device=like.device)
        return noise * self._thermal_speed(like, temperature_K)

    def _thermal_speed(self, like: Tensor, temperature_K: Tensor | None = None) -> Tensor:
        """√(kT / m) in nm/ps: (1, n_beads, 1) at the bath temperature, (B, n_beads, 1) for temperatures (B,) in K."""
        thermal = self.kT if temperature_K is None else kT(torch.as_tensor(temperature_K, dtype=like.dtype, device=like.device)).view(-1, 1, 1)
        return torch.sqrt(thermal / self.masses.to(like).view(1, -1, 1))

    def _forces(self, x: Tensor) -> Tensor:
        # Detached: the trajectory is data, never part of a training graph.
        return self.force_fn(x).detach()

    def _drift(self, x: Tensor, v: Tensor, dt: float) -> tuple[Tensor, Tensor, Tensor]:
        """A step x ← x + dt v, projected onto the constraints (SHAKE and the velocity correction
        Δx / dt); returns positions, velocities and whether each replica's SHAKE converged. The
        velocities are not RATTLE-projected here: every drift is followed by a velocity update that
        projects at the same positions, and the projection is linear (P(Pv + a) = P(v + a))."""
        moved = x + dt * v
        if self.constraints is None:
            return moved, v, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        projected, converged = self.constraints.project_positions(x, moved)
        return projected, v + (projected - moved) / dt, converged

    def _tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """v without its components along the constraints (RATTLE), or v itself without constraints."""
        return v if self.constraints is None else self.constraints.project_velocities(x, v)

    def _check(self, x: Tensor, forces: Tensor, previous: Tensor | None, constrained: Tensor | None = None) -> list[str]:
        """Failed check per replica ('' if healthy), in order of precedence."""
        reasons = [""] * x.shape[0]

        def flag(bad: Tensor, reason: str) -> None:
            for r in torch.nonzero(bad).squeeze(1).tolist():
                reasons[r] = reasons[r] or reason

        flag(~(torch.isfinite(x).all(dim=(1, 2)) & torch.isfinite(forces).all(dim=(1, 2))), "non-finite")
        if constrained is not None:  # whether SHAKE converged in the step (all True without constraints)
            flag(~constrained.cpu(), "constraints")
        with torch.no_grad():
            if self.max_force is not None:
                flag(torch.linalg.vector_norm(forces, dim=-1).amax(-1) > self.max_force, "force")
            if self.max_displacement is not None and previous is not None:
                flag(torch.linalg.vector_norm(x - previous, dim=-1).amax(-1) > self.max_displacement, "displacement")
            if self.min_distance is not None and x.shape[1] > 1:
                self_pairs = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
                d = torch.cdist(x, x).masked_fill(self_pairs, math.inf)
                flag(d.amin(dim=(1, 2)) < self.min_distance, "overlap")
        return reasons

    def run(
        self,
        x0: Tensor,
        n_steps: int,
        save_every: int = 1,
        seed: int | torch.Generator = 0,
        v0: Tensor | None = None,
        temperature_K: Tensor | None = None,
    ) -> LangevinResult:
        """Integrate replicas from x0 (B, n_beads, 3) nm for ``n_steps`` steps.

        Args:
            seed: an int seed or a ``torch.Generator`` (on x0's device) for the velocities and noise.
            v0: initial velocities (B, n_beads, 3) nm/ps; default Maxwell–Boltzmann at the bath temperature.
            temperature_K: a bath temperature (B,) in K per replica (replica exchange); default the
                integrator's. Only the O step and the default velocities depend on it.
        """
        if x0.ndim != 3 or x0.shape[1:] != (self.masses.numel(), 3):
            raise ValueError(f"x0 must have shape (B, {self.masses.numel()}, 3), got {tuple(x0.shape)}")
        if n_steps < 0 or save_every < 1:
            raise ValueError(f"need n_steps ≥ 0 and save_every ≥ 1, got {n_steps}, {save_every}")
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator(device=x0.device).manual_seed(seed)
        n_replicas = x0.shape[0]
        x = x0.detach().clone()
        per_replica = temperature_K is not None
        if per_replica and tuple(torch.as_tensor(temperature_K).shape) != (n_replicas,):
            raise ValueError(f"temperature_K must have shape ({n_replicas},), got {tuple(torch.as_tensor(temperature_K).shape)}")
        v = self._tangent(x, self.maxwell_boltzmann(n_replicas, generator, x, temperature_K) if v0 is None else v0.detach().clone().to(x))
        inv_mass = (1.0 / self.masses.to(x)).view(1, -1, 1)
        half_dt = 0.5 * self.timestep
        c1 = math.exp(-self.friction * self.timestep)
        noise_scale = math.sqrt(1.0 - c1 * c1) * self._thermal_speed(x, temperature_K)  # (1 or B, n_beads, 1)

        forces = self._forces(x)
        stopped_step = torch.full((n_replicas,), -1, dtype=torch.long)
        stop_reason = self._check(x, forces, None)
        alive = torch.tensor([not r for r in stop_reason], dtype=torch.bool)
        stopped_step[~alive] = 0
        forces = torch.where(torch.isfinite(forces), forces, torch.zeros_like(forces))  # frozen anyway

        frames, alive_history = [], []
        for step in range(1, n_steps + 1):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            running = torch.nonzero(alive).squeeze(1).to(x.device)
            if running.numel():
                x_old = x[running]
                v_new = self._tangent(x_old, v[running] + half_dt * forces[running] * inv_mass)
                x_new, v_new, first_ok = self._drift(x_old, v_new, half_dt)
                scale = noise_scale[running] if per_replica else noise_scale  # no per-step gather at one temperature
                v_new = self._tangent(x_new, c1 * v_new + scale * noise[running])
                x_new, v_new, second_ok = self._drift(x_new, v_new, half_dt)
                f_new = self._forces(x_new)
                v_new = self._tangent(x_new, v_new + half_dt * f_new * inv_mass)
                reasons = self._check(x_new, f_new, x_old, first_ok & second_ok)
                ok = torch.tensor([not r for r in reasons], dtype=torch.bool, device=x.device)
                keep = running[ok]
                x[keep], v[keep], forces[keep] = x_new[ok], v_new[ok], f_new[ok]
                for local in torch.nonzero(~ok).squeeze(1).tolist():
                    replica = int(running[local])
                    alive[replica] = False
                    stopped_step[replica] = step
                    stop_reason[replica] = reasons[local]
            if step % save_every == 0:
                frames.append(x.clone())
                alive_history.append(alive.clone())
        shape = (0, *x.shape)
        return LangevinResult(
            frames=torch.stack(frames) if frames else x.new_empty(shape),
            alive=torch.stack(alive_history) if alive_history else torch.empty((0, n_replicas), dtype=torch.bool),
            positions=x,
            velocities=v,
            stopped_step=stopped_step,
            stop_reason=stop_reason,
        )
