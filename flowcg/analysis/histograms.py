"""Divergences between histograms, as the sampling literature reports them.

KL(p‖q) = Σ_b p_b log((p_b + ε) / (q_b + ε)) over normalised bin masses p (reference) and q
(model); ε (FAB: 1e-10) keeps empty model bins finite. TV(p, q) = ½ Σ_b |p_b − q_b|.
"""

from __future__ import annotations

import numpy as np


def normalize(counts: np.ndarray) -> np.ndarray:
    """Bin masses that sum to 1 (all zeros stay zeros)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    """KL(p‖q) between two histograms of the same binning (normalised here)."""
    p, q = normalize(p), normalize(q)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    mask = p > 0
    return float(np.sum(p[mask] * np.log((p[mask] + eps) / (q[mask] + eps))))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """½ Σ |p − q| between two histograms of the same binning (normalised here)."""
    p, q = normalize(p), normalize(q)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    return float(0.5 * np.abs(p - q).sum())
