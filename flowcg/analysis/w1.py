"""Wasserstein-1 distance between CG ensembles, measured in the slow (TICA) coordinates.

Features. A CG frame X (n_beads × 3, nm) is described by its n(n−1)/2 bead–bead distances
(i < j, row-major), which are invariant to rigid motion, so no alignment is needed.

TICA (deeptime) is fitted on reference CG *trajectories* of these features at a lag of ``lag``
*saved frames* (the physical lag is ``lag`` × the saving interval); with deeptime's default
kinetic-map scaling the TICs are dimensionless, each scaled by its autocorrelation at the lag.
Model frames and reference frames are then projected on the first ``n_components`` TICs.

W1. For empirical measures μ = (1/n) Σ δ_{a_i} and ν = (1/m) Σ δ_{b_j},

    W1(μ, ν) = min_{γ ∈ Π(μ, ν)} Σ_ij γ_ij ‖a_i − b_j‖₂,

an exact linear programme (POT's network simplex ``ot.emd2`` on the Euclidean cost
``ot.dist(a, b, metric="euclidean")``). Its cost grows like n² in memory and about n³ in time,
so each set is subsampled (seeded) to at most ``max_samples`` points first. In one dimension
W1 is the L¹ distance between the quantile functions, computed exactly on all samples
(``scipy.stats.wasserstein_distance``); the per-TIC values come from that.

Weighted model frames (biased CG MD, each frame weighted by exp(+V/kT) for its bias V) enter the
joint W1 as an unweighted sample of the reweighted ensemble, ``max_samples`` points drawn by
systematic resampling (:func:`~flowcg.sampling.importance.systematic_resample`), and the 1-D W1
with their weights.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import ot
import torch
from deeptime.decomposition import TICA
from scipy.stats import wasserstein_distance

from flowcg.sampling.importance import normalized_weights, systematic_resample

__all__ = ["fit_cg_tica", "pairwise_distance_features", "project_tica", "w1_projections", "w1_samples", "w1_tica"]


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pairwise_distance_features(frames) -> np.ndarray:
    """Bead–bead distances (nm) of frames (..., n_beads, 3), flattened to (T, n(n−1)/2), pairs i < j.

    Leading dimensions are flattened in C order, so (n_saved, B, n, 3) frames from
    :class:`flowcg.md.langevin.LangevinBAOAB` become n_saved · B rows.
    """
    x = _as_numpy(frames).astype(np.float64)
    if x.ndim < 3 or x.shape[-1] != 3 or x.shape[-2] < 2:
        raise ValueError(f"expected frames (..., n_beads ≥ 2, 3), got {x.shape}")
    x = x.reshape(-1, *x.shape[-2:])
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.linalg.norm(x[:, j] - x[:, i], axis=-1)


def fit_cg_tica(cg_trajectories, lag: int, dim: int | None = None):
    """deeptime TICA model on the pairwise-distance features of reference CG trajectories.

    Args:
        cg_trajectories: one trajectory (T, n_beads, 3) nm or a sequence of them (independent
            runs; time-lagged pairs never cross from one to the next). For frames (n_saved, B,
            n, 3) of B replicas pass ``list(frames.unbind(1))`` / ``list(frames.swapaxes(0, 1))``.
        lag: lag time in *saved frames* (multiply by the saving interval for ps).
        dim: number of TICs kept (None: all).

    Returns:
        deeptime's ``CovarianceKoopmanModel`` (``transform`` takes distance features).
    """
    if isinstance(cg_trajectories, (np.ndarray, torch.Tensor)):
        if cg_trajectories.ndim != 3:
            # A (T, B, n, 3) batch would otherwise be read as T "trajectories" of B frames.
            shape = tuple(cg_trajectories.shape)
            raise ValueError(f"pass one trajectory (T, n_beads, 3) or a list of them, got shape {shape}")
        cg_trajectories = [cg_trajectories]
    trajectories: Sequence[np.ndarray] = [pairwise_distance_features(t) for t in cg_trajectories]
    if lag < 1 or not trajectories or max(len(t) for t in trajectories) <= lag:
        raise ValueError(f"TICA at lag {lag} frames needs a trajectory longer than the lag")
    # Trajectories shorter than the lag hold no time-lagged pair; deeptime would reject them.
    usable = [t for t in trajectories if len(t) > lag]
    return TICA(lagtime=lag, dim=dim).fit(usable).fetch_model()


def project_tica(frames, tica, n_components: int = 2) -> np.ndarray:
    """The first ``n_components`` TICs (T, n_components) of CG frames (..., n_beads, 3)."""
    projection = tica.transform(pairwise_distance_features(frames))
    if projection.shape[1] < n_components:
        raise ValueError(f"TICA model has {projection.shape[1]} components, {n_components} requested")
    return projection[:, :n_components]


def _subsample(points: np.ndarray, max_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_samples is None or len(points) <= max_samples:
        return points
    return points[rng.choice(len(points), size=max_samples, replace=False)]


def w1_samples(a, b, max_samples: int | None = 2000, seed: int = 0) -> float:
    """Exact W1 (Euclidean ground cost) between the empirical measures of points a (n, d) and b (m, d).

    Each set is first subsampled without replacement to at most ``max_samples`` points with a
    ``numpy`` generator seeded by ``seed`` (None: use all points).
    """
    a, b = _as_numpy(a).astype(np.float64), _as_numpy(b).astype(np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if len(a) == 0 or len(b) == 0 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two non-empty point sets of the same dimension, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_samples, rng), _subsample(b, max_samples, rng)
    cost = ot.dist(a, b, metric="euclidean")
    # The default iteration cap (1e5) stops the simplex early for a few thousand points.
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10_000_000))


def w1_projections(model, reference, max_samples: int | None = 2000, seed: int = 0, model_log_weights=None) -> dict[str, float | int]:
    """Joint and per-component W1 between projected points model (n, k) and reference (m, k).

    ``model_log_weights`` (n,): log weights of the model points (None: equal weights); the joint W1
    then takes ``max_samples`` (or n) points resampled by weight (module docstring).

    Returns ``w1`` (joint, Euclidean, subsampled as in :func:`w1_samples`), ``w1_tic<c>`` (exact
    1-D W1 of component c on all points), ``n_model`` and ``n_reference`` (before subsampling).
    """
    model, reference = _as_numpy(model).astype(np.float64), _as_numpy(reference).astype(np.float64)
    if model.ndim != 2 or reference.ndim != 2 or model.shape[1] != reference.shape[1]:
        raise ValueError(f"need (n, k) and (m, k) projections, got {model.shape} and {reference.shape}")
    weights = None
    joint_model = model
    if model_log_weights is not None:
        log_w = np.asarray(model_log_weights, dtype=np.float64).reshape(-1)
        if log_w.shape != (len(model),):
            raise ValueError(f"need one log weight per model point ({len(model)}), got shape {log_w.shape}")
        weights = normalized_weights(log_w)
        joint_model = model[systematic_resample(log_w, max_samples or len(model), seed=seed)]
    result: dict[str, float | int] = {"w1": w1_samples(joint_model, reference, max_samples, seed)}
    for c in range(model.shape[1]):
        result[f"w1_tic{c}"] = float(wasserstein_distance(model[:, c], reference[:, c], u_weights=weights))
    result["n_model"], result["n_reference"] = len(model), len(reference)
    return result


def w1_tica(
    model_frames,
    reference_frames,
    tica,
    n_components: int = 2,
    max_samples: int | None = 2000,
    seed: int = 0,
    model_log_weights=None,
) -> dict[str, float | int]:
    """W1 between model and reference CG frames on the first ``n_components`` TICs.

    Args:
        model_frames, reference_frames: CG frames (..., n_beads, 3) in nm (numpy or torch);
            leading dimensions are pooled (drop stopped replicas beforehand).
        tica: a model from :func:`fit_cg_tica`.
        n_components: number of leading TICs.
        max_samples: subsample size per set for the joint W1 (None: all points).
        seed: seed of the subsampling.
        model_log_weights: (n,) log weights of the model frames (pooled like them), or None.

    Returns:
        The dict of :func:`w1_projections`, in TIC units.
    """
    model = project_tica(model_frames, tica, n_components)
    reference = project_tica(reference_frames, tica, n_components)
    return w1_projections(model, reference, max_samples, seed, model_log_weights)
