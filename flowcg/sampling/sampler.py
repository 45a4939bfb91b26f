"""One-shot Boltzmann sampling: iid draws from a trained flow, reweighted to the target.

For x_i ~ q: log w_i = −β u(x_i) − log q(x_i) (β = 1: the target itself), and log w_i = −∞ for a
draw outside the target's conformational state (:meth:`flowcg.targets.base.Target.in_state`; for a
molecule by default the L, all-trans state, :mod:`flowcg.coordinates.state`): the weights are those
of the density restricted to the state, and every estimator counts every draw. From these come the
Kish ESS, the log Z estimate (of the state) and self-normalised observables (:mod:`importance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowcg.errors import ConfigError
from flowcg.flows.model import StructuredFlow
from flowcg.sampling.importance import PARETO_MIN_WEIGHTS, kish_ess, kl_estimate, log_z_estimate, pareto_khat
from flowcg.targets.base import Target


@dataclass
class SampleSet:
    """iid model samples with everything needed to reweight them (numpy, float64).

    Attributes:
        x: configurations, (N, *event_shape).
        log_q: model log-density, (N,).
        energies_kT: reduced energies u(x), (N,); NaN/inf where the energy failed.
        log_w: log importance weights −β u − log q, (N,); −inf where the energy failed or x is
            outside the target's state.
        z_slow: slow latents (the CVs) the samples were drawn from, (N, ds).
        in_state: (N,) bool, True where x is in the target's state.
        beta: the β the weights refer to.
    """

    x: np.ndarray
    log_q: np.ndarray
    energies_kT: np.ndarray
    log_w: np.ndarray
    z_slow: np.ndarray
    in_state: np.ndarray
    beta: float = 1.0

    def summary(self) -> dict:
        """ESS (plain and clipped), the weights' Pareto k̂ (None below ``PARETO_MIN_WEIGHTS`` finite ones), log Z, KL estimate and the
        count of failed energies and the share of draws outside the target's state, as plain floats."""
        return {
            "n_samples": int(self.log_w.size),
            "ess": kish_ess(self.log_w),
            "ess_clipped": kish_ess(self.log_w, clip_fraction=1e-4),
            "pareto_khat": pareto_khat(self.log_w) if np.isfinite(self.log_w).sum() >= PARETO_MIN_WEIGHTS else None,
            "log_z": log_z_estimate(self.log_w),
            "kl_estimate": kl_estimate(self.log_w),
            "nonfinite_energies": int((~np.isfinite(self.energies_kT)).sum()),
            "fraction_outside_state": float(1.0 - self.in_state.mean()),
        }

    def save(self, path: str | Path, include_x: bool = True, **extra: np.ndarray) -> None:
        """Write an npz with log_q, energies_kT, log_w, z_slow, in_state, beta, any ``extra`` arrays and
        (``include_x``) x; molecules keep x in a trajectory file instead."""
        arrays = {"x": self.x} if include_x else {}
        np.savez_compressed(path, **arrays, log_q=self.log_q, energies_kT=self.energies_kT, log_w=self.log_w, z_slow=self.z_slow,
                            in_state=self.in_state, beta=self.beta, **extra)


@torch.no_grad()
def draw_samples(model: StructuredFlow, target: Target, n: int, batch_size: int = 10_000, beta: float = 1.0,
                 slow: Callable[[int], torch.Tensor] | torch.Tensor | None = None) -> SampleSet:
    """Draw n iid samples in batches and score them under the target.

    ``slow``: draw each batch of m as x ~ q(x | s) at s = slow(m) (e.g. ``model.latent.uniform_slow``),
    or at the next m rows of a tensor of n slow states, instead of x ~ q; log q and log w stay those
    of the joint q."""
    if n < 1:
        raise ConfigError(f"number of samples must be ≥ 1, got {n}")
    if isinstance(slow, torch.Tensor) and len(slow) != n:
        raise ValueError(f"draw_samples needs one slow state per draw: {len(slow)} states for {n} draws")
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"x": [], "log_q": [], "u": [], "z_slow": [], "in_state": []}
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        if slow is None:
            draw = model.sample(m)
        else:
            draw = model.sample_given_slow(slow[start: start + m] if isinstance(slow, torch.Tensor) else slow(m))
        parts["x"].append(draw.x.cpu().double().numpy())
        parts["in_state"].append(target.in_state(parts["x"][-1]))
        parts["log_q"].append(draw.log_q.cpu().double().numpy())
        parts["u"].append(target.energy(draw.x).cpu().double().numpy())
        parts["z_slow"].append(draw.z[:, : model.slow_dim].cpu().double().numpy())
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    log_w = -beta * joined["u"] - joined["log_q"]
    log_w[~(np.isfinite(log_w) & joined["in_state"])] = -np.inf
    return SampleSet(x=joined["x"], log_q=joined["log_q"], energies_kT=joined["u"], log_w=log_w, z_slow=joined["z_slow"],
                     in_state=joined["in_state"], beta=beta)
