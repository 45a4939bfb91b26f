"""MD-equivalent cost: how many MD steps a reference simulation needs to match a model's accuracy.

Given an MD time series of (φ, ψ) saved every ``steps_per_frame`` integration steps, the running
Ramachandran KL(ref‖MD[:k]) of the first k frames (FAB's 64×64 estimator, see
:mod:`flowcg.analysis.ramachandran`) is evaluated at
log-spaced k. The MD cost of an accuracy level κ is the number of steps k · steps_per_frame at
the first checkpoint where the running KL ≤ κ. Each MD step costs one force evaluation, so
``md_steps_to_reach(model_kl, curve) / model_energy_evaluations`` is the speed-up over MD.

Taking the *first* crossing favours MD (its running KL fluctuates), so speed-ups are on the
conservative side. The comparison reference should be independent of the series (another run):
against its own full length the running KL reaches 0 at the end by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowcg.analysis.molecular import Reference
from flowcg.analysis.ramachandran import kl_of_histograms, ramachandran_histogram
from flowcg.sampling.importance import as_numpy


@dataclass
class MDCostCurve:
    """Running KL of an MD series: ``kl[i]`` after ``steps[i]`` MD steps (``frames[i]`` frames)."""

    frames: np.ndarray
    steps: np.ndarray
    kl: np.ndarray


def md_cost_curve(
    phi,
    psi,
    steps_per_frame: int,
    reference: tuple | None = None,
    bins: int = 64,
    n_points: int = 60,
    min_frames: int = 10,
) -> MDCostCurve:
    """Running Ramachandran KL(ref‖MD[:k]) at ``n_points`` log-spaced frame counts k.

    Args:
        phi, psi: the MD series (T,) in rad, in time order.
        steps_per_frame: integration steps between saved frames.
        reference: (φ_ref, ψ_ref[, frame weights]) defining the reference histogram, e.g. a
            :class:`~flowcg.analysis.molecular.Reference` of biased walkers; default the whole series.
        bins: bins per axis (64 = FAB).
        n_points: number of checkpoints, from ``min_frames`` to T.
    """
    phi, psi = as_numpy(phi), as_numpy(psi)
    ref = Reference(*(reference if reference is not None else (phi, psi)))
    ref_counts = ramachandran_histogram(ref.phi, ref.psi, bins, ref.weights)
    frames = np.unique(np.geomspace(min(min_frames, len(phi)), len(phi), n_points).astype(int))
    # The running histogram grows by the counts of each new segment: O(T) overall, not O(T · n_points).
    counts = np.zeros((bins, bins))
    kl, start = [], 0
    for stop in frames:
        counts += ramachandran_histogram(phi[start:stop], psi[start:stop], bins)
        start = stop
        kl.append(kl_of_histograms(ref_counts, counts))
    return MDCostCurve(frames=frames, steps=frames * int(steps_per_frame), kl=np.asarray(kl))


def md_steps_to_reach(kl: float, curve: MDCostCurve) -> float:
    """MD steps at the first checkpoint with running KL ≤ ``kl``; ``inf`` if the series never gets there."""
    hit = np.flatnonzero(curve.kl <= kl)
    return float(curve.steps[hit[0]]) if hit.size else float("inf")
