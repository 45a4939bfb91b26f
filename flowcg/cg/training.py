"""Fitting a CG potential to labelled frames: force matching, plus optional energy matching.

Data: rows (X_k, F_k, w_k) of CG positions (nm), mapped forces (kJ/mol/nm) and weights
(:class:`flowcg.active.labels.Labels`). Force matching (Noid et al. 2008) minimises

    L_F(θ) = Σ_k w_k ‖F_θ(X_k) − F_k‖² / (3 n Σ_k w_k),   F_θ = −∇U_θ,

whose minimiser over all potentials is the mean force −∇A(X). Minibatches are drawn with
probability ∝ w_k (with replacement), which makes the plain batch mean an unbiased estimate.
The learning rate decays along a cosine to ``final_lr_factor`` × lr: an instantaneous mapped force
scatters by ≈ 300 kJ/mol/nm about the mean force (the loss stays ≈ 10⁵ at its minimum), so at a
constant rate the last iterate is a random draw around the minimiser, and two fits of the same
data (or a fit and its fine-tune) differ by that noise rather than by their data.

Energy matching (optional, weight λ; arXiv 2509.14600): a free-energy target per frame from
1-D densities of the TICA components of the current data,

    E_k = −kT Σ_i log p_i(TIC_i(X_k)) − U_prior(X_k)     (kJ/mol),

(U_prior: the prior's fixed terms; learned prior terms count as part of the model) matched by the
network energy up to a constant: L_E = Var_batch(U_net(X) − E). The loss is
L_F + λ L_E. The densities are weighted histograms (with one pseudo-count per bin, so a bin
without data costs a large but finite free energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from flowcg.analysis.w1 import project_tica
from flowcg.cg.prior import CGPrior
from flowcg.cg.schnet import CGSchNet
from flowcg.errors import ConfigError
from flowcg.units import kT

__all__ = ["FitOptions", "fit_force_matching", "tica_free_energy", "weighted_force_mse"]


@dataclass
class FitOptions:
    """Optimiser settings of :func:`fit_force_matching`.

    steps: optimiser steps (minibatches); batch_size: rows per step; lr: Adam learning rate at
    the start, decayed along a cosine to ``final_lr_factor`` × lr at the last step (module
    docstring); energy_weight: λ of the energy-matching term (0 switches it off).
    """

    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    final_lr_factor: float = 0.01
    energy_weight: float = 0.0


def tica_free_energy(cg_positions_nm: np.ndarray, weights: np.ndarray, tica, temperature_K: float,
                     n_components: int = 2, bins: int = 50) -> np.ndarray:
    """−kT Σ_i log p_i(TIC_i(X)) in kJ/mol, (K,), from weighted 1-D histograms of the frames themselves."""
    projected = project_tica(cg_positions_nm, tica, n_components)
    energy = np.zeros(len(projected))
    for tic in projected.T:
        counts, edges = np.histogram(tic, bins=bins, weights=weights * len(weights) / weights.sum())
        density = (counts + 1.0) / ((counts.sum() + bins) * np.diff(edges))
        energy -= np.log(density[np.clip(np.searchsorted(edges, tic, side="right") - 1, 0, bins - 1)])
    return kT(temperature_K) * energy


def weighted_force_mse(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> float:
    """Σ_k w_k ‖F_k − F̂_k‖² / (3 n Σ_k w_k) in (kJ/mol/nm)²: the force-matching loss L_F over rows (K, n, 3)."""
    weights = weights.to(target.dtype)
    return float((((predicted.detach() - target) ** 2).mean(dim=(1, 2)) * weights).sum() / weights.sum())


def _fixed_prior_energy(prior: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The prior's energy without its trainable terms (a :class:`CGPrior`'s learned dihedrals belong
    to the model); any other prior module counts whole."""
    return prior.fixed_energy(x) if isinstance(prior, CGPrior) else prior(x)


def fit_force_matching(model: CGSchNet, positions_nm: np.ndarray, forces_kJ_mol_nm: np.ndarray, weights: np.ndarray,
                       options: FitOptions, seed: int = 0, energy_targets_kJ_mol: np.ndarray | None = None) -> dict[str, float]:
    """Train ``model`` in place on the rows (module docstring); returns the final losses.

    ``energy_targets_kJ_mol`` (K,) are the E_k of the energy-matching term; needed iff
    ``options.energy_weight > 0``.
    """
    if options.energy_weight > 0 and energy_targets_kJ_mol is None:
        raise ConfigError("energy matching (energy_weight > 0) needs energy targets")
    as_model = dict(dtype=model.dtype, device=model.bead_types.device)
    x = torch.as_tensor(positions_nm, **as_model)
    f = torch.as_tensor(forces_kJ_mol_nm, **as_model)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if x.shape != f.shape or x.ndim != 3 or len(w) != len(x):
        raise ConfigError(f"need positions and forces (K, n, 3) and weights (K,), got {tuple(x.shape)}, {tuple(f.shape)}, {tuple(w.shape)}")
    if not bool(torch.isfinite(f).all() & torch.isfinite(x).all()) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
        raise ConfigError("force-matching data must be finite with non-negative weights of positive sum")
    e = None if energy_targets_kJ_mol is None else torch.as_tensor(energy_targets_kJ_mol, **as_model)
    generator = torch.Generator().manual_seed(seed)
    trainable = model.trainable_parameters()
    if not trainable:  # the prior alone, with nothing to fit: report its loss on the data
        return {"force_mse": weighted_force_mse(model.forces(x, create_graph=False), f, w), "energy_var": math.nan}
    optimizer = torch.optim.Adam(trainable, lr=options.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(options.steps, 1), eta_min=options.lr * options.final_lr_factor)
    model.train()
    force_loss = energy_loss = math.nan
    for _ in range(options.steps):
        rows = torch.multinomial(w, options.batch_size, replacement=True, generator=generator)
        energy, predicted = model.energy_and_forces(x[rows], create_graph=True)
        loss = ((predicted - f[rows]) ** 2).mean()
        force_loss = loss.item()
        if options.energy_weight > 0:
            network_energy = energy if model.prior is None else energy - _fixed_prior_energy(model.prior, x[rows])
            residual = network_energy - e[rows]
            matched = residual.var()
            energy_loss = matched.item()
            loss = loss + options.energy_weight * matched
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return {"force_mse": force_loss, "energy_var": energy_loss}
