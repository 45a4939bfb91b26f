"""What an oracle hands back: labelled all-atom configurations, mapped to CG.

An oracle answers Q CG query frames with K ≥ Q all-atom configurations x_k, each tied to the
query it answers. Each carries the CG force-matching label of its mapping C, D
(:class:`~flowcg.cg.mapping.CGMapping`):

    X_k = C x_k  (nm),    F_k = D f(x_k)  (kJ/mol/nm),

and a weight w_k ≥ 0 in units of independent frames, so that data from different oracles mix
in one weighted force-matching loss: 1 per MD frame; for the K importance-weighted draws of a
flow query, the self-normalised weights scaled to sum to their Kish effective sample size
ESS_q = (Σ w)² / Σ w² ∈ [1, K], the number of independent frames they are worth.

Mean-force labels (:meth:`Labels.mean_force`). Force matching estimates the conditional mean force
E[D f(x) | C x = X]; a query's weighted draws can be collapsed into that estimate directly, one
row per query: X̄ = Σ_k w_k X_k / W, F̄ = Σ_k w_k F_k / W, weight W = Σ_k w_k. When the draws share
their CG configuration the force-matching loss is unchanged up to a constant,
Σ_k w_k |F_θ(X) − F_k|² = W |F_θ(X) − F̄|² + Σ_k w_k |F_k − F̄|², at 1/K of the rows; when they
differ (the flow oracle fixes (φ, ψ), not the stiff CG bonds and angles) the label is the mean
force at the mean configuration.

Importance-weighted design (:meth:`Labels.importance_weighted`). When the query frames X_i were
drawn from a pool of one-shot flow draws (CG marginal q) with probabilities π_i, and each query
was answered by K draws x_ik ~ q(x | s_i) at its slow state, the rows weighted

    v_ik ∝ w̃(x_ik) / (N π_i),    w̃(x) = exp(−u(x) − log q(x))   (joint, unnormalised),

estimate Boltzmann averages without bias: E over pool, picks and draws of Σ_ik v_ik g(x_ik) is
∝ ∫ e^(−u) g dx, since E_{x ~ q(x|s)}[w̃(x)] = p̃(s)/q(s) (the query's marginal weight) and the
1/(N π_i) undoes the choice. The labels of such a batch (or of a batch drawn uniformly) are then
an equilibrium design whatever the strategy preferred, as in importance-weighted active learning
(Beygelzimer, Dasgupta & Langford, ICML 2009). The batch is scaled to the Kish ESS of its
per-query sums Σ_k v_ik: the K draws of a query share one slow state, so the batch is worth
about as many independent frames as it has well-weighted queries, not draws.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from flowcg.errors import ConfigError
from flowcg.io import load_npz, save_npz_atomic

__all__ = ["Labels", "Oracle"]


@dataclass
class Labels:
    """Labelled configurations, one row per all-atom configuration.

    Attributes:
        positions_nm: (K, N, 3) the all-atom configurations x.
        cg_positions_nm: (K, n_beads, 3) mapped positions C x.
        cg_forces_kJ_mol_nm: (K, n_beads, 3) mapped forces D f(x).
        weights: (K,) weights in units of independent frames (module docstring).
        query: (K,) index of the query each configuration answers (0-based, per batch).
        energies_kJ_mol: (K,) all-atom potential energies U(x).
        n_energy_evaluations: energy/force evaluations the oracle spent on this batch.
        wall_s: the oracle's wall time for this batch, in s.
        log_weights: (K,) joint log importance weights −u(x) − log q(x) of flow draws (unnormalised,
            one constant per batch); NaN where there is none (MD frames, resampled draws).
    """

    positions_nm: np.ndarray
    cg_positions_nm: np.ndarray
    cg_forces_kJ_mol_nm: np.ndarray
    weights: np.ndarray
    query: np.ndarray
    energies_kJ_mol: np.ndarray
    n_energy_evaluations: int = 0
    wall_s: float = 0.0
    log_weights: np.ndarray | None = None

    def __post_init__(self):
        k = len(self.weights)
        if self.log_weights is None:
            self.log_weights = np.full(k, np.nan)
        if self.cg_positions_nm.shape != self.cg_forces_kJ_mol_nm.shape or self.cg_positions_nm.shape[0] != k:
            raise ValueError(f"labels disagree in shape: positions {self.cg_positions_nm.shape}, forces "
                             f"{self.cg_forces_kJ_mol_nm.shape}, {k} weights")
        if len(self.query) != k or len(self.energies_kJ_mol) != k or len(self.positions_nm) != k or len(self.log_weights) != k:
            raise ValueError("labels need one configuration, query index, energy and log weight per row")

    @property
    def n_queries(self) -> int:
        return len(np.unique(self.query))

    def __len__(self) -> int:
        return len(self.weights)

    @classmethod
    def empty(cls, n_atoms: int, n_beads: int) -> "Labels":
        """No labels (what an oracle returns when every query failed)."""
        return cls(np.zeros((0, n_atoms, 3)), np.zeros((0, n_beads, 3)), np.zeros((0, n_beads, 3)), np.zeros(0),
                   np.zeros(0, dtype=np.int64), np.zeros(0))

    @classmethod
    def concatenate(cls, parts: list["Labels"]) -> "Labels":
        """One batch from several; query indices are renumbered so that batches stay apart."""
        if not parts:
            raise ValueError("nothing to concatenate")
        offsets = np.cumsum([0] + [int(p.query.max()) + 1 if len(p) else 0 for p in parts[:-1]])
        return cls(
            positions_nm=np.concatenate([p.positions_nm for p in parts]),
            cg_positions_nm=np.concatenate([p.cg_positions_nm for p in parts]),
            cg_forces_kJ_mol_nm=np.concatenate([p.cg_forces_kJ_mol_nm for p in parts]),
            weights=np.concatenate([p.weights for p in parts]),
            query=np.concatenate([p.query + o for p, o in zip(parts, offsets)]),
            energies_kJ_mol=np.concatenate([p.energies_kJ_mol for p in parts]),
            n_energy_evaluations=sum(p.n_energy_evaluations for p in parts),
            wall_s=sum(p.wall_s for p in parts),
            log_weights=np.concatenate([p.log_weights for p in parts]),
        )

    def mean_force(self) -> "Labels":
        """One row per query: its rows' weighted mean CG position and force, their summed weight
        (module docstring); the all-atom configuration and energy of its heaviest row stand for it.
        Queries whose weights are all 0 are dropped."""
        queries = np.unique(self.query[self.weights > 0])
        rows = [np.flatnonzero((self.query == q) & (self.weights > 0)) for q in queries]
        total = np.array([self.weights[r].sum() for r in rows])
        heaviest = np.array([r[np.argmax(self.weights[r])] for r in rows], dtype=np.int64)

        def mean(values: np.ndarray) -> np.ndarray:
            return np.stack([np.tensordot(self.weights[r], values[r], axes=1) / w for r, w in zip(rows, total)]) if rows else values[:0]

        return Labels(self.positions_nm[heaviest], mean(self.cg_positions_nm), mean(self.cg_forces_kJ_mol_nm), total, queries,
                      self.energies_kJ_mol[heaviest], self.n_energy_evaluations, self.wall_s)

    def per_query_unit_weight(self) -> "Labels":
        """The same rows with each query's weights rescaled to sum to 1: a query counts as one CG
        configuration of the design, however many configurations the oracle returned for it. The
        K draws of a flow query share their slow coordinates (φ, ψ), so they average the label noise
        of one point of the slow space rather than cover K points of it. Queries whose weights are
        all 0 keep them."""
        totals = np.bincount(self.query, weights=self.weights).astype(np.float64)  # int64 when there are no rows
        scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
        return replace(self, weights=self.weights * scale[self.query])

    def importance_weighted(self, design_weights: np.ndarray) -> "Labels":
        """The rows reweighted to an equilibrium design (module docstring): row ik gets
        w̃(x_ik) × ``design_weights[i]`` (1/(N π_i) of query i, any common scale), the batch scaled to
        the Kish ESS of its per-query sums. Rows of weight 0 stay 0; every other row needs a finite
        log weight (flow draws, not MD frames)."""
        design = np.asarray(design_weights, dtype=np.float64)
        if len(self) and (design.ndim != 1 or len(design) <= self.query.max()):
            raise ValueError(f"need one design weight per query (≥ {self.query.max() + 1}), got shape {design.shape}")
        used = self.weights > 0
        if not np.isfinite(self.log_weights[used]).all():
            raise ConfigError("importance-weighted labels need the oracle's joint log weights (flow draws); these rows have none")
        if not used.any():
            return self
        raw = np.zeros(len(self))
        raw[used] = np.exp(self.log_weights[used] - self.log_weights[used].max()) * design[self.query[used]]
        per_query = np.bincount(self.query, weights=raw)
        ess = per_query.sum() ** 2 / (per_query**2).sum()
        return replace(self, weights=raw * ess / raw.sum())

    def save(self, path: str | Path) -> None:
        """Atomic npz write: a kill leaves the old file or the new one, never half of one."""
        save_npz_atomic(path, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> "Labels":
        required = [f.name for f in fields(cls) if f.name != "log_weights"]  # absent from label files before 2026-12-06
        values = load_npz(path, what="label file", keys=required, optional=["log_weights"])
        values["n_energy_evaluations"] = int(values["n_energy_evaluations"])
        values["wall_s"] = float(values["wall_s"])
        return cls(**values)


class Oracle(Protocol):
    """Supplies labelled all-atom configurations for CG query frames."""

    name: str

    def label(self, cg_frames_nm: np.ndarray, seed: int) -> Labels:
        """Labels for the CG frames (Q, n_beads, 3); the same seed gives the same labels."""
        ...
