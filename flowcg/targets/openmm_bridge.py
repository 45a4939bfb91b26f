"""OpenMM as a differentiable torch energy: batched evaluation, one configuration at a time.

OpenMM has no batched-energy API, so :class:`OpenMMEvaluator` loops over the frames of a batch
(``setPositions`` → ``getState(energy, forces)``), optionally split across a pool of worker
processes, each with its own ``Context``. :func:`openmm_energy` wraps it in a
``torch.autograd.Function`` whose backward is −forces: ∂U/∂x = −F.

Units: positions in nm, energies in kJ/mol, forces in kJ/(mol nm).

A configuration OpenMM cannot evaluate (non-finite input, a NaN/inf result, an OpenMM exception)
gets energy +inf and zero forces, with a logged warning; it never raises or hangs, so one bad
sample cannot kill a training run.
"""

from __future__ import annotations

import logging
import multiprocessing

import numpy as np
import openmm
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL")


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms this installation can run."""
    return [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]


def default_platform() -> str:
    """The fastest CPU platform available: ``CPU`` if present, else ``Reference``."""
    return "CPU" if "CPU" in available_platforms() else "Reference"


def _make_context(system_xml: str, platform: str, threads: int | None) -> openmm.Context:
    system = openmm.XmlSerializer.deserialize(system_xml)
    properties = {"Threads": str(threads)} if platform == "CPU" and threads else {}
    # The integrator is never stepped; a Context needs one.
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), properties)


def _evaluate_frames(context: openmm.Context, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Energies (B,), forces (B, N, 3) and failure notes for positions x (B, N, 3) in nm."""
    energies = np.full(x.shape[0], np.inf)
    forces = np.zeros(x.shape)
    failures = []
    for b, frame in enumerate(x):
        if not np.isfinite(frame).all():
            failures.append(f"frame {b}: non-finite coordinates")
            continue
        try:
            context.setPositions(frame)
            state = context.getState(getEnergy=True, getForces=True)
        except openmm.OpenMMException as err:
            failures.append(f"frame {b}: OpenMM error: {err}")
            continue
        energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
        frame_forces = state.getForces(asNumpy=True).value_in_unit(
            openmm.unit.kilojoule_per_mole / openmm.unit.nanometer
        )
        if not (np.isfinite(energy) and np.isfinite(frame_forces).all()):
            failures.append(f"frame {b}: non-finite energy or forces (E = {energy})")
            continue
        energies[b], forces[b] = energy, frame_forces
    return energies, forces, failures


# One Context per worker process, built once by the pool initializer.
_worker_context: openmm.Context | None = None


def _init_worker(system_xml: str, platform: str) -> None:
    global _worker_context
    _worker_context = _make_context(system_xml, platform, threads=1)


def _evaluate_in_worker(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return _evaluate_frames(_worker_context, x)


class OpenMMEvaluator:
    """Energies and forces of a batch of configurations from OpenMM.

    Args:
        system: the ``openmm.System``.
        platform: ``Reference``, ``CPU``, ``CUDA`` or ``OpenCL``; default :func:`default_platform`.
        n_workers: number of worker processes (each one thread, one Context); 1 evaluates in this
            process. Batches are split into contiguous chunks, one per worker.
        threads: threads of the in-process CPU platform (``None``: OpenMM's default).
    """

    def __init__(self, system: openmm.System, platform: str | None = None, n_workers: int = 1, threads: int | None = None):
        self._pool = None
        self._context = None
        platform = platform or default_platform()
        if platform not in PLATFORMS:
            raise ValueError(f"unknown OpenMM platform '{platform}'; choose one of {', '.join(PLATFORMS)}")
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.platform = platform
        self.n_workers = int(n_workers)
        self.n_atoms = system.getNumParticles()
        system_xml = openmm.XmlSerializer.serialize(system)
        if self.n_workers > 1:
            # spawn: a forked child would inherit the parent's OpenMM/torch thread state.
            self._pool = multiprocessing.get_context("spawn").Pool(
                self.n_workers, initializer=_init_worker, initargs=(system_xml, platform)
            )
        else:
            self._context = _make_context(system_xml, platform, threads)

    def evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(energies (B,) kJ/mol, forces (B, N, 3) kJ/(mol nm)) for positions x (B, N, 3) in nm."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.n_atoms, 3)
        if self._pool is None:
            energies, forces, failures = _evaluate_frames(self._context, x)
        else:
            chunks = [c for c in np.array_split(x, self.n_workers) if len(c)]
            results = self._pool.map(_evaluate_in_worker, chunks)
            energies = np.concatenate([r[0] for r in results])
            forces = np.concatenate([r[1] for r in results])
            offsets = np.cumsum([0] + [len(c) for c in chunks])
            failures = [f"chunk at {o}: {note}" for o, r in zip(offsets, results) for note in r[2]]
        if failures:
            logger.warning(
                "OpenMM could not evaluate %d of %d configurations (energy set to +inf, forces to 0): %s",
                len(failures), len(x), "; ".join(failures[:3]) + (" ..." if len(failures) > 3 else ""),
            )
        return energies, forces

    def close(self) -> None:
        """Stop the worker pool (if any)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __del__(self):
        self.close()

    def __getstate__(self):
        raise TypeError("OpenMMEvaluator holds OpenMM contexts and processes; it cannot be pickled")


class _OpenMMEnergy(torch.autograd.Function):
    """U(x) from OpenMM with dU/dx = −F from the same call."""

    @staticmethod
    def forward(ctx, x: Tensor, evaluator: OpenMMEvaluator) -> Tensor:
        energies, forces = evaluator.evaluate(x.detach().cpu().double().numpy())
        ctx.save_for_backward(torch.as_tensor(forces, dtype=x.dtype, device=x.device))
        return torch.as_tensor(energies, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_energy: Tensor):
        (forces,) = ctx.saved_tensors
        return -forces * grad_energy[:, None, None], None


def openmm_energy(x: Tensor, evaluator: OpenMMEvaluator) -> Tensor:
    """Differentiable OpenMM potential energy (kJ/mol), shape (B,), of positions x (B, N, 3) in nm."""
    return _OpenMMEnergy.apply(x, evaluator)
