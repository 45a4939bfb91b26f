"""Tempering schedules: the sequence of inverse temperatures β (relative to the target, β = 1).

Training runs in stages; each stage trains at one β, and after each stage the schedule proposes
the next from a fresh batch of model samples (reduced energies u, log q). Every schedule is
monotone and its last stage is at β = 1.

* constant: β = 1 from the start (plain reverse KL, no tempering).
* linear / geometric: ``n_stages`` values from β0 to 1, evenly spaced in β or in log β.
* adaptive: the largest Δβ for which the importance-sampling estimate of the relative KL
  increase stays ≤ δ (Schöberl et al. 2020; Stupp & Koutsourelakis 2025). With
  log w_β = −β u − log q, the KL of the current model to p_β is estimated by
  K(β) = log mean(w_β) − mean(log w_β), and a candidate β' = β + Δβ is accepted when
  (K(β') − K(β)) / max(K(β), kl_floor) ≤ δ. Δβ starts at 1 − β and shrinks by ``shrink`` until
  accepted (but not below ``min_step``). ``kl_floor`` keeps a near-perfect fit (K → 0) from
  freezing the schedule.
"""

from __future__ import annotations

import abc

import numpy as np

from flowcg.errors import ConfigError, build_from_options
from flowcg.sampling.importance import kl_estimate


class Schedule(abc.ABC):
    """Proposes β for the next stage; stateless apart from its configuration."""

    initial_beta: float

    @abc.abstractmethod
    def next_beta(self, beta: float, energies_kT: np.ndarray, log_q: np.ndarray) -> float:
        """β of the stage after the one just trained at ``beta`` (≥ beta, ≤ 1)."""


class ConstantSchedule(Schedule):
    """β = 1 throughout: plain reverse KL."""

    initial_beta = 1.0

    def next_beta(self, beta, energies_kT, log_q):
        return 1.0


class _FixedSchedule(Schedule):
    def __init__(self, betas: np.ndarray):
        self.betas = np.asarray(betas, dtype=np.float64)
        self.betas[-1] = 1.0
        self.initial_beta = float(self.betas[0])

    def next_beta(self, beta, energies_kT, log_q):
        later = self.betas[self.betas > beta * (1 + 1e-12)]
        return float(later[0]) if later.size else 1.0


def _check_beta0(beta0: float) -> float:
    if not 0.0 < beta0 <= 1.0:
        raise ConfigError(f"beta0 must lie in (0, 1], got {beta0}")
    return float(beta0)


class LinearSchedule(_FixedSchedule):
    """``n_stages`` β values evenly spaced from β0 to 1."""

    def __init__(self, beta0: float, n_stages: int):
        super().__init__(np.linspace(_check_beta0(beta0), 1.0, max(int(n_stages), 1)))


class GeometricSchedule(_FixedSchedule):
    """``n_stages`` β values evenly spaced in log β from β0 to 1."""

    def __init__(self, beta0: float, n_stages: int):
        super().__init__(np.geomspace(_check_beta0(beta0), 1.0, max(int(n_stages), 1)))


class AdaptiveSchedule(Schedule):
    """Largest Δβ whose estimated relative KL increase is ≤ δ (see module docstring)."""

    def __init__(self, beta0: float, delta: float = 0.1, shrink: float = 0.6, kl_floor: float = 1.0, min_step: float = 1e-6):
        if not 0 < shrink < 1:
            raise ConfigError(f"shrink must lie in (0, 1), got {shrink}")
        if delta <= 0:
            raise ConfigError(f"delta must be positive, got {delta}")
        self.initial_beta = _check_beta0(beta0)
        self.delta, self.shrink, self.kl_floor, self.min_step = float(delta), float(shrink), float(kl_floor), float(min_step)

    def relative_kl_increase(self, beta: float, new_beta: float, energies_kT: np.ndarray, log_q: np.ndarray) -> float:
        """(K(β') − K(β)) / max(K(β), kl_floor) from samples of q."""
        kl_now = kl_estimate(-beta * energies_kT - log_q)
        kl_new = kl_estimate(-new_beta * energies_kT - log_q)
        return (kl_new - kl_now) / max(kl_now, self.kl_floor)

    def next_beta(self, beta, energies_kT, log_q):
        energies_kT, log_q = np.asarray(energies_kT, dtype=np.float64), np.asarray(log_q, dtype=np.float64)
        step = 1.0 - beta
        while step > self.min_step and self.relative_kl_increase(beta, beta + step, energies_kT, log_q) > self.delta:
            step *= self.shrink
        return float(min(1.0, beta + max(step, self.min_step)))


SCHEDULES = {"constant": ConstantSchedule, "linear": LinearSchedule, "geometric": GeometricSchedule, "adaptive": AdaptiveSchedule}


def build_schedule(kind: str, **options) -> Schedule:
    """Schedule by name (see :data:`SCHEDULES`) with its keyword options."""
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown tempering schedule '{kind}'; choose one of {', '.join(SCHEDULES)}")
    return build_from_options(SCHEDULES[kind], "train.schedule", options)
