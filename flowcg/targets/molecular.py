"""Molecular Boltzmann targets: p(x) ∝ exp(−U(x)/kT) for an all-atom force field.

x holds Cartesian positions, ``(B, n_atoms, 3)`` in nm; U is the OpenMM potential energy in kJ/mol;
kT = R·T in kJ/mol. Two interchangeable back-ends evaluate U:

``torch``
    :class:`~flowcg.targets.forcefield.TorchForceField`, batched and differentiable on any torch
    device, self-checked against OpenMM at construction. The default: it is much faster for batches.
``openmm``
    OpenMM itself through :func:`~flowcg.targets.openmm_bridge.openmm_energy`, frame by frame, for
    force fields the torch backend does not implement.

A configuration whose energy is not finite (atoms on top of each other, NaN coordinates) gets
u = +inf and a zero gradient, as for every target (:meth:`flowcg.targets.base.Target.energy`).

The density is that of a conformational state (``state``, :mod:`flowcg.coordinates.state`): by
default the L, all-trans state that MD and the published references sample. The energy itself is
the force field's everywhere (the KL objectives, forces and MD never see the state); one-shot
draws outside it, those of ``flowcg-sample`` and of the prior refits
(:func:`flowcg.sampling.draw_samples`), get importance weight 0.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from openmm import unit
from torch import Tensor

from flowcg.coordinates.state import ConformationalState
from flowcg.targets.base import Target, TargetInputError
from flowcg.targets.forcefield import TorchForceField, UnsupportedForceError
from flowcg.targets.openmm_bridge import OpenMMEvaluator, openmm_energy
from flowcg.targets.systems import MolecularSystem, load_system, load_system_from_files

BACKENDS = ("torch", "openmm")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MolecularTarget(Target):
    """Boltzmann density of a :class:`~flowcg.targets.systems.MolecularSystem` at its temperature.

    Args:
        molecular_system: system, topology and reference positions.
        backend: ``"torch"`` or ``"openmm"``.
        platform: OpenMM platform of the ``openmm`` backend (default: fastest CPU platform).
        n_workers: worker processes of the ``openmm`` backend.
        dtype: ``"float32"`` or ``"float64"``, the working precision of the ``torch`` backend
            (energies are returned in the dtype of the input); ``.to(torch.float64)`` and
            ``.to(device)`` of the target change it later, exactly (the force field keeps its
            parameters in float64, see :class:`~flowcg.targets.forcefield.TorchForceField`).
        device: torch device of the ``torch`` backend.
        compile: ``torch.compile`` the ``torch`` backend's kernels for full chunks of configurations
            (about 3× the throughput on CPU at large batches; a first-call cost of seconds; see
            :mod:`flowcg.targets.forcefield`).
        state: the conformational state the density is restricted to, one of
            :data:`flowcg.coordinates.state.STATES` (``l_trans``: every CA L, every amide trans).

    Attributes:
        topology: ``mdtraj.Topology``; system: ``openmm.System``; positions: reference positions
            (n_atoms, 3) float64 nm; temperature: K; kT: kJ/mol.

    Raises:
        TargetInputError: the ``torch`` backend does not implement a force of the system (the
            message names it; ``backend="openmm"`` evaluates any system).
    """

    def __init__(
        self,
        molecular_system: MolecularSystem,
        backend: str = "torch",
        platform: str | None = None,
        n_workers: int = 1,
        dtype: str = "float32",
        device: str | torch.device = "cpu",
        compile: bool = False,
        state: str = "l_trans",
    ):
        super().__init__(event_shape=(molecular_system.n_atoms, 3))
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
        self.name = molecular_system.name
        self.backend = backend
        self.molecular_system = molecular_system
        self.system = molecular_system.system
        self.topology = molecular_system.topology
        self.positions = molecular_system.positions
        self.state = ConformationalState(self.topology, state)
        self.temperature = molecular_system.temperature
        self.kT = float(
            (unit.MOLAR_GAS_CONSTANT_R * molecular_system.temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
        )
        if backend == "torch":
            try:
                self.forcefield = TorchForceField(self.system, self.positions, dtype=DTYPES[dtype], device=device, compile=compile)
            except UnsupportedForceError as error:  # the user's system, not a bug: one line, no traceback
                raise TargetInputError(f"{self.name}: {error}") from None
            self.evaluator = None
        else:
            self.forcefield = None
            self.evaluator = OpenMMEvaluator(self.system, platform=platform, n_workers=n_workers)

    @property
    def constraints(self) -> tuple[tuple[int, int, float], ...]:
        """The system's bond constraints (atom i, atom j, length nm); a flow on internal coordinates
        leaves those bonds out (:class:`~flowcg.coordinates.InternalCoordinateTransform`)."""
        return self.molecular_system.constraints

    def in_state(self, x) -> np.ndarray:
        """(B,) True for the frames x (B, atoms, 3) in the target's conformational state."""
        return self.state.contains(x)

    def _reduced_energy(self, x: Tensor) -> Tensor:
        """U(x)/kT, shape (B,), in the dtype and on the device of x (U from the chosen backend)."""
        if self.forcefield is not None:
            energy = self.forcefield(x.to(dtype=self.forcefield.dtype, device=self.forcefield.device))
            energy = energy.to(dtype=x.dtype, device=x.device)
        else:
            energy = openmm_energy(x, self.evaluator)
        return energy / self.kT

    def energy_and_forces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(U in kJ/mol (B,), −∇U in kJ/(mol nm) like x) in one evaluation per configuration, detached;
        non-finite energies come back as +inf."""
        self.check_shape(x)
        self.n_energy_evaluations += int(x.shape[0])
        if self.forcefield is not None:
            ff = self.forcefield
            energy, forces = ff.energy_and_forces(x.detach().to(dtype=ff.dtype, device=ff.device))
        else:
            energy, forces = (torch.as_tensor(a) for a in self.evaluator.evaluate(x.detach().cpu().double().numpy()))
        energy, forces = energy.to(dtype=x.dtype, device=x.device), forces.to(dtype=x.dtype, device=x.device)
        return torch.where(torch.isfinite(energy), energy, torch.full_like(energy, float("inf"))), forces

    def forces(self, x: Tensor) -> Tensor:
        """−∇U in kJ/(mol nm), shape of x (OpenMM's own forces for the ``openmm`` backend)."""
        if self.evaluator is None:
            return super().forces(x)
        self.check_shape(x)
        self.n_energy_evaluations += int(x.shape[0])
        _, forces = self.evaluator.evaluate(x.detach().cpu().double().numpy())
        return torch.as_tensor(forces, dtype=x.dtype, device=x.device)


def preset_target(
    preset: str,
    backend: str = "torch",
    temperature: float = 300.0,
    platform: str | None = None,
    n_workers: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    state: str = "l_trans",
) -> MolecularTarget:
    """The target of a :func:`~flowcg.targets.systems.load_system` preset (``aldp_implicit`` etc.)."""
    return MolecularTarget(
        load_system(preset, temperature=temperature),
        backend=backend,
        platform=platform,
        n_workers=n_workers,
        dtype=dtype,
        device=device,
        compile=compile,
        state=state,
    )


#: Registry factories: alanine dipeptide (22 atoms) with ff96 + OBC1 (openmmtools
#: ``AlanineDipeptideImplicit``, the FAB / TA-BG target), ff96 in vacuum, amber14 + OBC2.
aldp_implicit = partial(preset_target, "aldp_implicit")
aldp_vacuum = partial(preset_target, "aldp_vacuum")
aldp_amber14 = partial(preset_target, "aldp_amber14")
#: Ace-(Ala)3-Nme and Ace-(Ala)5-Nme, amber99sbildn + OBC, X–H bonds constrained (the TA-BG / CMT targets).
ala4_implicit = partial(preset_target, "ala4_implicit")
ala6_implicit = partial(preset_target, "ala6_implicit")


def molecule_from_files(
    path: str | Path,
    coordinates: str | Path | None = None,
    forcefield: Sequence[str] = (),
    implicit_solvent: str | None = None,
    system_xml: str | Path | None = None,
    constraints: str | None = None,
    backend: str = "torch",
    temperature: float = 300.0,
    platform: str | None = None,
    n_workers: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    state: str = "l_trans",
) -> MolecularTarget:
    """A target from user files (``conf/target/molecule.yaml``): an Amber prmtop + coordinates, a
    PDB/mmCIF + force-field XMLs, or a PDB/mmCIF + a serialized OpenMM System XML; ``temperature`` in K.

    See :func:`~flowcg.targets.systems.load_system_from_files` for ``path``, ``coordinates``,
    ``forcefield``, ``implicit_solvent``, ``system_xml`` and ``constraints``, and
    :class:`MolecularTarget` for the rest.
    """
    molecular_system = load_system_from_files(
        path, coordinates=coordinates, forcefield=forcefield, implicit_solvent=implicit_solvent, system_xml=system_xml,
        constraints=constraints, temperature=temperature,
    )
    return MolecularTarget(
        molecular_system, backend=backend, platform=platform, n_workers=n_workers, dtype=dtype, device=device, compile=compile,
        state=state,
    )


__all__ = ["MolecularTarget", "preset_target", "aldp_implicit", "aldp_vacuum", "aldp_amber14", "ala4_implicit", "ala6_implicit",
           "molecule_from_files"]
