"""KL divergence of the 1-D marginals of internal coordinates (FAB's "median KL" metric).

For every coordinate i: KL(ref_i‖model_i) on 200 bins (FAB), with the range taken from the
reference samples, [min_i, max_i], for bonds and angles, and (−π, π] for torsions; ε = 1e-10 on
the densities (see :mod:`flowcg.analysis.divergences`). Model samples outside the reference range
are ignored, as in FAB. Report the median over coordinates.
"""

from __future__ import annotations

import math

import numpy as np

from flowcg.analysis.divergences import EPS, bin_volume, histogram_density, histogram_kl
from flowcg.sampling.importance import _as_numpy as _numpy


def marginal_kls(ref_ic, model_ic, periodic_mask, bins: int = 200, weights=None, eps: float = EPS) -> np.ndarray:
    """Per-coordinate KL(ref‖model) of internal coordinates, shape (D,).

    Args:
        ref_ic: reference internal coordinates (N_ref, D) (nm / rad).
        model_ic: model internal coordinates (N_model, D).
        periodic_mask: (D,) bool, True for torsions (binned on (−π, π]).
        bins: bins per coordinate (FAB: 200).
        weights: optional (N_model,) non-negative weights for the model samples (importance
            reweighting); normalisation is implicit.
    """
    ref_ic, model_ic = _numpy(ref_ic), _numpy(model_ic)
    periodic = _numpy(periodic_mask).astype(bool)
    weights = None if weights is None else _numpy(weights)
    kls = np.empty(ref_ic.shape[1])
    for i in range(ref_ic.shape[1]):
        lo, hi = (-math.pi, math.pi) if periodic[i] else (ref_ic[:, i].min(), ref_ic[:, i].max())
        ranges = [(lo, hi)]
        kls[i] = histogram_kl(
            histogram_density(ref_ic[:, i], bins, ranges),
            histogram_density(model_ic[:, i], bins, ranges, weights),
            bin_volume(bins, ranges),
            eps,
        )
    return kls
