"""The trained Boltzmann generator as oracle: all-atom configurations for a CG frame, with weights.

For a CG query X the oracle draws from the flow's conditional at the query's slow latent. The
slow latent of a structured internal-coordinate flow is a function of the backbone torsions
(φ, ψ), which the backbone CG frame fixes; it is found by encoding the backmapped structure
(:class:`~flowcg.active.backmap.TorsionBackmapper`), z_s = encode(x_bm)_slow, and then

    x_k ~ q(x | z_s),   k = 1..K,
    w_k ∝ exp(−u(x_k) − log q(x_k | z_s)),   Σ_k w_k = ESS_q = (Σ w)² / Σ w²,

importance weights (scaled to the query's Kish effective sample size, the number of independent
frames they are worth; :mod:`flowcg.active.labels`) towards the Boltzmann density restricted to (φ, ψ) =
(φ(X), ψ(X)). Since log q(x | z_s) = log q(x) − log p(z_s) and p(z_s) is shared within a query,
the joint log q suffices. Why these are valid force-matching labels: conditioning on a function
of the CG coordinates leaves p(x | C x) untouched (the same argument as for a restrained MD
oracle), so the weighted pairs (C x_k, D f(x_k)) have the right conditional mean force. The
configurations' other CG coordinates (the backbone bonds and angles) come from the model, not
from the query frame. Cost: K energy+force evaluations per query (the torch force field).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.labels import Labels
from flowcg.cg.mapping import CGMapping
from flowcg.coordinates.geometry import wrap
from flowcg.errors import ConfigError
from flowcg.flows.model import FlowSample, StructuredFlow
from flowcg.sampling.importance import kish_ess, systematic_resample

__all__ = ["FlowOracle"]

log = logging.getLogger(__name__)

#: largest |Δφ|, |Δψ| (rad) tolerated between a query and its conditional draws.
TORSION_TOLERANCE = 1e-3

LABEL_KINDS = ("draws", "mean_force")


class FlowOracle:
    """Labels from a trained :class:`StructuredFlow` (module docstring).

    Args:
        model: the trained flow on the target's internal coordinates, slow latents = (φ, ψ)
            and not moved by the couplings (``transform_slow: false``).
        target: the molecular target (energies in kJ/mol via ``energy_and_forces``).
        mapping: the CG mapping the labels are expressed in.
        backmapper: finds the all-atom structure, hence the slow latent, of a CG frame.
        samples_per_query: K, configurations (and energy evaluations) per query.
        labels: ``"draws"`` (the K weighted configurations) or ``"mean_force"`` (one row per query,
            their weighted mean force: :meth:`Labels.mean_force`).
    """

    name = "flow"

    def __init__(self, model: StructuredFlow, target, mapping: CGMapping, backmapper: TorsionBackmapper, samples_per_query: int = 32,
                 labels: str = "draws"):
        if samples_per_query < 1:
            raise ConfigError(f"samples_per_query must be ≥ 1, got {samples_per_query}")
        if labels not in LABEL_KINDS:
            raise ConfigError(f"unknown flow-oracle labels '{labels}'; choose one of {', '.join(LABEL_KINDS)}")
        self.label_kind = labels
        self.model = model.eval()
        self.target = target
        self.mapping = mapping
        self.backmapper = backmapper
        self.samples_per_query = samples_per_query

    def label(self, cg_frames_nm: np.ndarray, seed: int) -> Labels:
        cg = np.asarray(cg_frames_nm, dtype=np.float64)
        if cg.ndim != 3 or cg.shape[1:] != (self.mapping.n_beads, 3):
            raise ValueError(f"CG queries must have shape (Q, {self.mapping.n_beads}, 3), got {cg.shape}")
        start = time.perf_counter()
        reference = next(self.model.parameters())
        as_model = dict(dtype=reference.dtype, device=reference.device)
        k = self.samples_per_query
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            z_slow, _ = self.model.encode(torch.as_tensor(self.backmapper(cg), **as_model))
            draws = self.model.sample_given_slow(z_slow.repeat_interleave(k, dim=0))
        x = draws.x.to(torch.float64)
        query = np.repeat(np.arange(len(cg)), k)
        cg_draws = self.mapping.map_positions(x.numpy())
        self._check_torsions(self.backmapper.torsions(cg_draws), self.backmapper.torsions(cg)[query])
        energy, forces, log_w = self._score(x, draws.log_q)
        weights = _normalise_per_query(log_w, query)
        keep = weights > 0
        dropped = np.setdiff1d(np.arange(len(cg)), query[keep])
        if dropped.size:
            log.warning("flow oracle: no finite weight for queries %s; they get no labels", dropped.tolist())
        labels = self._labels(x, energy, forces, keep, weights[keep], query[keep], start, log_w[keep])
        return labels.mean_force() if self.label_kind == "mean_force" else labels

    def equilibrium(self, n: int, seed: int) -> Labels:
        """``n`` labelled configurations of the Boltzmann ensemble without a query: n one-shot draws
        x ~ q(x), resampled by their weights exp(−u(x) − log q(x)) (systematic resampling), so the
        rows are an unweighted equilibrium sample (each its own query, weight 1; a draw picked twice
        is two rows). Cost: n energy+force evaluations. Data-free initial data that covers every
        basin at its weight, which the prior's Boltzmann inversion needs (:mod:`flowcg.cg.prior`)."""
        if n < 1:
            raise ConfigError(f"need at least one equilibrium draw, got {n}")
        start = time.perf_counter()
        draws = self._sample(n, seed)
        x = draws.x.to(torch.float64)
        energy, forces, log_w = self._score(x, draws.log_q)
        chosen = systematic_resample(log_w, n, seed)
        log.info("flow oracle: %d equilibrium draws, Kish ESS %.3f, %d distinct after resampling", n, kish_ess(log_w), len(np.unique(chosen)))
        return self._labels(x, energy, forces, chosen, np.ones(n), np.arange(n), start)

    def proposals(self, n: int, seed: int) -> np.ndarray:
        """(n, n_beads, 3) CG frames (nm) of n one-shot draws x ~ q(x), with no energy evaluated: a
        candidate pool distributed as q's CG marginal. Queries picked from it and answered by
        :meth:`label` carry joint log weights that undo both q's error and the pick
        (:meth:`Labels.importance_weighted`)."""
        if n < 1:
            raise ConfigError(f"need at least one proposal, got {n}")
        return self.mapping.map_positions(self._sample(n, seed).x.to(torch.float64).numpy())

    def _sample(self, n: int, seed: int) -> FlowSample:
        """n one-shot draws of the model from ``seed``, leaving the global random stream untouched."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            return self.model.sample(n)

    def _score(self, x: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Energies (kJ/mol), forces (kJ/mol/nm) and log weights −u(x) − log q(x) of draws x (float64, nm)."""
        energy, forces = self.target.energy_and_forces(x)
        return energy, forces, (-energy / self.target.kT - log_q.to(torch.float64)).numpy()

    def _labels(self, x: torch.Tensor, energy: torch.Tensor, forces: torch.Tensor, rows: np.ndarray, weights: np.ndarray,
                query: np.ndarray, start: float, log_weights: np.ndarray | None = None) -> Labels:
        """The labels of draws ``x[rows]`` (a mask or indices; every draw's evaluation counted), timed from ``start``;
        ``log_weights`` (of the rows) the joint log importance weights, if they are to be kept."""
        positions = x.numpy()[rows]
        return Labels(
            positions_nm=positions,
            cg_positions_nm=self.mapping.map_positions(positions),
            cg_forces_kJ_mol_nm=self.mapping.map_forces(forces.numpy()[rows]),
            weights=weights,
            query=query,
            energies_kJ_mol=energy.numpy()[rows],
            n_energy_evaluations=len(x),
            wall_s=time.perf_counter() - start,
            log_weights=log_weights,
        )

    @staticmethod
    def _check_torsions(got: torch.Tensor, wanted: torch.Tensor) -> None:
        """The draws' (φ, ψ) must be the queries': the flow oracle is exact only if they are."""
        error = float(wrap(got - wanted).abs().max()) if len(got) else 0.0
        if error > TORSION_TOLERANCE:
            raise ConfigError(f"the flow moved the slow torsions by up to {error:.3g} rad: the flow oracle needs a model "
                             "whose slow latents are (φ, ψ) and stay fixed (transform_slow: false)")


def _normalise_per_query(log_w: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Importance weights within each query, scaled to sum to its Kish ESS; non-finite log weights get 0."""
    weights = np.zeros_like(log_w)
    finite = np.isfinite(log_w)
    for q in np.unique(query):
        rows = np.flatnonzero((query == q) & finite)
        if rows.size:
            w = np.exp(log_w[rows] - log_w[rows].max())
            weights[rows] = w * w.sum() / (w * w).sum()
    return weights
