"""The force field itself: :class:`TorchForceField`, the sum of the terms of an ``openmm.System``,
chunked, optionally compiled, and exposed to autograd (package docstring)."""

from __future__ import annotations

import numpy as np
import openmm
import torch
from torch import Tensor, nn

from flowcg.compiled import CheckedCompile
from flowcg.targets.cpu_allocator import retain_freed_memory
from flowcg.targets.forcefield.bonded import HarmonicAngles, HarmonicBonds, PeriodicTorsions
from flowcg.targets.forcefield.check import check_against_openmm, disagreement
from flowcg.targets.forcefield.common import _dot, _unsupported, unordered_pairs
from flowcg.targets.forcefield.nonbonded import Nonbonded
from flowcg.targets.forcefield.obc import OBCGeneralizedBorn
from flowcg.threads import FORCEFIELD_THREADS, torch_threads


#: Configurations per chunk: long enough tensor ops to amortise their dispatch cost (a few µs
#: each), small enough temporaries (≤ 1 MB in float32) to stay in the outer caches.
CHUNK = 512


class _Energy(torch.autograd.Function):
    """U(x) for autograd: the forward pass computes U and ∂U/∂x together
    (:meth:`TorchForceField.energy_and_gradient`), the backward only scales the stored ∂U/∂x."""

    @staticmethod
    def forward(ctx, x: Tensor, forcefield: "TorchForceField") -> Tensor:
        energy, grad = forcefield.energy_and_gradient(x)
        ctx.save_for_backward(grad)
        return energy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_energy: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_energy[:, None, None], None


_TERM_BUILDERS = {
    openmm.HarmonicBondForce: HarmonicBonds,
    openmm.HarmonicAngleForce: HarmonicAngles,
    openmm.PeriodicTorsionForce: PeriodicTorsions,
    openmm.NonbondedForce: Nonbonded,
    openmm.GBSAOBCForce: OBCGeneralizedBorn.from_gbsaobc_force,
    openmm.CustomGBForce: OBCGeneralizedBorn.from_custom_gb_force,
}
_IGNORED = (openmm.CMMotionRemover,)


class TorchForceField(nn.Module):
    """U(x) in kJ/mol of an ``openmm.System`` for a batch x of shape (B, N, 3) in nm.

    Args:
        system: the OpenMM system (non-periodic, NoCutoff nonbonded).
        positions: reference positions (N, 3) nm used for the self-check against OpenMM;
            ``None`` skips the check.
        dtype: ``torch.float32`` or ``torch.float64``; ``.to(dtype)`` changes it later, and refills the
            parameters from their float64 values read from the System (kept on the CPU, one copy).
        device: torch device; ``.to(device)`` moves it.
        compile: evaluate full chunks with ``torch.compile``d kernels (see the module docstring).

    Raises:
        UnsupportedForceError: the system holds a force the torch backend does not implement.
        ForceFieldMismatchError: the self-check against OpenMM failed.
    """

    def __init__(
        self, system: openmm.System, positions: np.ndarray | None = None, dtype=torch.float64, device="cpu", compile: bool = False
    ):
        super().__init__()
        # Constraints are not energy terms: U(x) is the sum of the forces at any x, and fixing the
        # constrained bond lengths is the coordinate map's job (flowcg.coordinates.internal).
        terms = {}
        for force in system.getForces():
            if isinstance(force, _IGNORED):
                continue
            builder = _TERM_BUILDERS.get(type(force))
            if builder is None:
                raise _unsupported(type(force).__name__)
            terms[f"{type(force).__name__}_{len(terms)}"] = builder(force)
        self.terms = nn.ModuleDict(terms)
        self.pair_terms = [t for t in terms.values() if hasattr(t, "energy_and_dr2")]
        self.bonded_terms = [t for t in terms.values() if not hasattr(t, "energy_and_dr2")]
        self.n_atoms = system.getNumParticles()
        self.register_buffer("pairs", unordered_pairs(self.n_atoms))
        # An empty floating buffer that .to() / .double() / .cuda() cast and move with the parameter
        # buffers: the working dtype and device are read off it (the ``dtype`` and ``device``
        # properties), so they cannot go stale after a cast. Not persistent: state dicts keep their keys.
        self.register_buffer("_placement", torch.empty(0, dtype=torch.float64), persistent=False)
        # The parameters exactly as read from the System (float64, CPU, outside the buffers): every cast
        # refills the floating buffers from them (see _apply), so a float32 force field cast to float64
        # holds the float64 parameters, not float32-rounded ones (a 1e-7 relative energy error).
        self._exact_parameters = {
            name: b.clone() for name, b in self.named_buffers() if b.is_floating_point() and name != "_placement"
        }
        self.to(dtype=dtype, device=device)
        if torch.device(device).type == "cpu":
            retain_freed_memory()  # else every pass page-faults its temporaries anew (see there)
        # full chunks only: one static shape, one compilation (see the module docstring)
        self._compiled_chunk = CheckedCompile(
            self._chunk_energy_and_gradient, "the force field", self._compiled_disagreement, accepts=lambda y: y.shape[-1] == CHUNK
        ) if compile else None
        if positions is not None:
            check_against_openmm(self, system, positions)

    def _apply(self, fn, recurse=True):
        """The hook of every ``nn.Module`` cast and move (``.to()``, ``.double()``, ``.cuda()``, ...):
        applies ``fn``, then refills each floating parameter buffer from its exact float64 value in the
        new dtype and on the new device."""
        super()._apply(fn, recurse)
        for name, exact in self._exact_parameters.items():
            module_name, _, buffer_name = name.rpartition(".")
            setattr(self.get_submodule(module_name), buffer_name, exact.to(dtype=self.dtype, device=self.device, copy=True))
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The working dtype of the parameter buffers (inputs must have it); follows ``.to()``."""
        return self._placement.dtype

    @property
    def device(self) -> torch.device:
        """The device of the parameter buffers (inputs must be on it); follows ``.to()``."""
        return self._placement.device

    def forward(self, x: Tensor) -> Tensor:
        """Potential energy in kJ/mol, shape (B,), differentiable once with respect to x."""
        return _Energy.apply(x, self)

    def energy_and_forces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(U in kJ/mol of shape (B,), F = −∇U in kJ/(mol nm) of shape (B, N, 3)), detached."""
        energy, grad = self.energy_and_gradient(x)
        return energy, grad.neg_()

    @torch.no_grad()
    def energy_and_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(U (B,) in kJ/mol, ∂U/∂x (B, N, 3) in kJ/(mol nm)) in one pass, chunk by chunk
        (on :data:`~flowcg.threads.FORCEFIELD_THREADS` threads on the CPU)."""
        energy = x.new_empty(x.shape[0])
        grad = torch.empty_like(x)
        with torch_threads(FORCEFIELD_THREADS if x.device.type == "cpu" else None):
            for start in range(0, x.shape[0], CHUNK):
                chunk = slice(start, start + CHUNK)
                energy[chunk], g = self._chunk_pass(x[chunk].permute(1, 2, 0).contiguous())
                grad[chunk] = g.permute(2, 0, 1)
        return energy, grad

    @property
    def compiled(self) -> bool:
        """Whether full chunks go through the compiled kernels."""
        return self._compiled_chunk is not None and self._compiled_chunk.active

    def _chunk_pass(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The compiled kernels for a full chunk (checked against the eager pass on first use), else eager."""
        return self._chunk_energy_and_gradient(y) if self._compiled_chunk is None else self._compiled_chunk(y)

    def _compiled_disagreement(self, compiled: tuple[Tensor, Tensor], eager: tuple[Tensor, Tensor]) -> str | None:
        bad, de, dg = disagreement(compiled[0], eager[0], compiled[1].permute(2, 0, 1), eager[1].permute(2, 0, 1), self.dtype)
        if not bad.any():
            return None
        return f"on {bad.sum()} of {len(bad)} configurations, max |ΔE| = {de.max():.3g} kJ/mol, max |Δ∂U/∂x| = {dg.max():.3g} kJ/(mol nm)"

    def _chunk_energy_and_gradient(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """U (b,) and ∂U/∂y (N, 3, b) of atom-major coordinates y (N, 3, b)."""
        grad = torch.zeros_like(y)
        energy = y.new_zeros(y.shape[-1])
        if self.pair_terms:
            d = y.index_select(0, self.pairs[0]) - y.index_select(0, self.pairs[1])  # x_i − x_j, (P, 3, b)
            r2 = _dot(d, d)
            inv_r = torch.rsqrt(r2)
            de_dr2 = 0
            for term in self.pair_terms:
                e, g = term.energy_and_dr2(r2, inv_r)
                energy += e
                de_dr2 = de_dr2 + g
            f = 2.0 * de_dr2.unsqueeze(1) * d  # ∂U/∂x_i = −∂U/∂x_j = 2 ∂U/∂r²_ij (x_i − x_j)
            grad.index_add_(0, self.pairs[0], f).index_add_(0, self.pairs[1], f, alpha=-1.0)
        for term in self.bonded_terms:
            e, grads = term.energy_and_gradient(y)
            energy += e
            for atoms, g in zip(term.idx.T, grads):
                grad.index_add_(0, atoms, g)
        return energy, grad
