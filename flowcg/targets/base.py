"""The Target interface: what flowcg samples.

A target is a Boltzmann density p(x) ∝ exp(−u(x)) over configurations x of a fixed
``event_shape``, where u = U/kT is the *reduced* energy (dimensionless, in units of kT).
Every method takes a leading batch dimension.

A target knows nothing of flows, trainers or samplers. Subclasses implement
:meth:`_reduced_energy`; the public :meth:`energy` adds what every target needs:
shape validation with a clear error; counting of energy evaluations, the currency in which
sampler budgets are compared across papers; and one convention for impossible configurations
(overlapping atoms, NaN coordinates): their energy is +inf, never NaN, so importance weights
exp(−u) are exactly zero there, and their gradient is zero, so one of them cannot poison the
gradient of a whole batch.
"""

from __future__ import annotations

import abc

import numpy as np
import torch
from torch import Tensor, nn

from flowcg.errors import ConfigError


class TargetInputError(ConfigError):
    """Input a target cannot use: configurations that do not fit it (wrong shape, wrong dimension),
    or molecule files it cannot be built from (missing, unreadable, inconsistent)."""


class _ZeroNonFiniteGradient(torch.autograd.Function):
    """Identity whose backward replaces non-finite gradient entries by 0.

    Where u = +inf the chain rule gives 0 · ∞ = NaN even when the loss ignores the sample.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


class Target(nn.Module, abc.ABC):
    """Batched Boltzmann target p(x) ∝ exp(−u(x)), u in kT.

    Attributes:
        name: registry name of the target.
        event_shape: shape of one configuration, ``(D,)`` for vectors or
            ``(n_atoms, 3)`` (nm) for molecules.
        kT: thermal energy in the target's physical energy unit (kJ/mol for
            molecules, 1 for dimensionless toy targets); physical energy = kT · u.
        log_z_exact: log ∫ exp(−u(x)) dx where it is known in closed form or by
            quadrature, else ``None``.
        n_energy_evaluations: number of configurations whose energy has been
            evaluated through :meth:`energy` (a batch of B counts B).
    """

    name: str = "target"
    kT: float = 1.0
    log_z_exact: float | None = None

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.n_energy_evaluations = 0

    def in_state(self, x) -> np.ndarray:
        """(B,) True for the configurations x the target's density covers: every one here; a
        molecule restricts itself to a conformational state (:mod:`flowcg.coordinates.state`), and
        a draw outside it gets importance weight 0 (:func:`flowcg.sampling.draw_samples`)."""
        return np.ones(len(x), dtype=bool)

    @property
    def dim(self) -> int:
        """Number of degrees of freedom in one configuration (product of event_shape)."""
        n = 1
        for s in self.event_shape:
            n *= s
        return n

    def check_shape(self, x: Tensor) -> None:
        """Raise :class:`TargetInputError` unless ``x`` is a batch of configurations."""
        if not isinstance(x, Tensor):
            raise TargetInputError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise TargetInputError(
                f"{self.name}: expected configurations of shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def energy(self, x: Tensor) -> Tensor:
        """Reduced energy u(x) = U(x)/kT, shape (B,); +inf (zero gradient) where not finite.
        Differentiable where the backend is."""
        self.check_shape(x)
        self.n_energy_evaluations += int(x.shape[0])
        u = self._reduced_energy(_ZeroNonFiniteGradient.apply(x) if x.requires_grad else x)
        return torch.where(torch.isfinite(u), u, torch.full_like(u, float("inf")))

    def forces(self, x: Tensor) -> Tensor:
        """Forces −∇U(x) in physical units (energy unit of ``kT`` per length unit), shape of x.

        The default differentiates :meth:`energy` with autograd; backends with their own
        forces (OpenMM) override it.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self.energy(x)
            (grad,) = torch.autograd.grad(u.sum(), x)
        return -self.kT * grad

    def log_prob_unnormalized(self, x: Tensor) -> Tensor:
        """log p̃(x) = −u(x), shape (B,)."""
        return -self.energy(x)

    def sample_exact(self, n: int) -> Tensor:
        """Exact iid samples, where the target admits them."""
        raise NotImplementedError(f"{self.name} has no exact sampler")

    @abc.abstractmethod
    def _reduced_energy(self, x: Tensor) -> Tensor:
        """u(x) for a validated batch x of shape (B, *event_shape)."""
