"""KL divergence of the 1-D marginals of internal coordinates (FAB's "median KL" metric).

For every coordinate i: KL(ref_i‖model_i) on 200 bins (FAB), with the range taken from the
reference samples, [min_i, max_i], for bonds and angles, and (−π, π] for torsions; ε = 1e-10 added
to the densities, i.e. ε·Δ on the bin masses for bin width Δ (the estimator of
:mod:`flowcg.analysis.ramachandran` in 1-D). Model samples outside the reference range are
ignored, as in FAB. Report the median over coordinates.
"""

from __future__ import annotations

import math

import numpy as np

from flowcg.analysis.histograms import kl_divergence
from flowcg.analysis.ramachandran import FAB_EPS
from flowcg.sampling.importance import as_numpy


def marginal_kls(ref_ic, model_ic, periodic_mask, bins: int = 200, weights=None) -> np.ndarray:
    """Per-coordinate KL(ref‖model) of internal coordinates, shape (D,).

    Args:
        ref_ic: reference internal coordinates (N_ref, D) (nm / rad).
        model_ic: model internal coordinates (N_model, D).
        periodic_mask: (D,) bool, True for torsions (binned on (−π, π]).
        bins: bins per coordinate (FAB: 200).
        weights: optional (N_model,) non-negative weights for the model samples (importance
            reweighting); normalisation is implicit.
    """
    ref_ic, model_ic = as_numpy(ref_ic), as_numpy(model_ic)
    periodic = as_numpy(periodic_mask).astype(bool)
    weights = None if weights is None else as_numpy(weights)
    kls = np.empty(ref_ic.shape[1])
    for i in range(ref_ic.shape[1]):
        lo, hi = (-math.pi, math.pi) if periodic[i] else (ref_ic[:, i].min(), ref_ic[:, i].max())
        ref_counts, _ = np.histogram(ref_ic[:, i], bins=bins, range=(lo, hi))
        model_counts, _ = np.histogram(model_ic[:, i], bins=bins, range=(lo, hi), weights=weights)
        kls[i] = kl_divergence(ref_counts, model_counts, eps=FAB_EPS * (hi - lo) / bins)
    return kls
