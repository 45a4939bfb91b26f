"""Histogram estimates of KL divergence and total variation between two sample sets.

Both sets are binned on the same grid as *densities* d (np.histogramdd with density=True:
count / (N_in_range · bin volume), weights allowed). Samples outside the grid are ignored, and the
normalisation uses the in-range mass only (numpy's convention, which FAB inherits).

    KL(ref‖model) = Σ_bins ΔV · d_ref · log((d_ref + ε) / (d_model + ε))
    TV(ref, model) = ½ Σ_bins ΔV · |d_ref − d_model|   ∈ [0, 1]

with ΔV the bin volume. The ε (default 1e-10) is added to the *densities* (per unit of the
binned variables, e.g. rad⁻² for the Ramachandran plane), not to the bin probabilities: this is
FAB's estimator (``fab-torch``, ``evaluate_aldp``). An empty model bin under reference mass
therefore costs ΔV · d_ref · log(d_ref / ε), finite but large.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-10


def histogram_density(samples, bins: int, ranges, weights=None) -> np.ndarray:
    """Density histogram of ``samples`` (N, d) on ``bins`` bins per axis over ``ranges`` [(lo, hi)] * d.

    Returns an array of shape (bins,) * d that integrates to 1 over the grid, or all zeros when
    no (weighted) sample falls inside it.
    """
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples.reshape(len(samples), -1)
    counts, _ = np.histogramdd(samples, bins=bins, range=ranges, weights=weights)
    total = counts.sum()
    if total <= 0:
        return np.zeros_like(counts)
    volume = np.prod([(hi - lo) / bins for lo, hi in ranges])
    return counts / (total * volume)


def bin_volume(bins: int, ranges) -> float:
    """Volume ΔV of one bin of the grid used by :func:`histogram_density`."""
    return float(np.prod([(hi - lo) / bins for lo, hi in ranges]))


def histogram_kl(ref_density: np.ndarray, model_density: np.ndarray, volume: float, eps: float = EPS) -> float:
    """KL(ref‖model) from density histograms on one grid (see the module docstring for ε)."""
    return float(np.sum(ref_density * np.log((ref_density + eps) / (model_density + eps))) * volume)


def histogram_tv(ref_density: np.ndarray, model_density: np.ndarray, volume: float) -> float:
    """Total-variation distance ½ Σ ΔV |d_ref − d_model| between two density histograms."""
    return float(0.5 * np.sum(np.abs(ref_density - model_density)) * volume)
