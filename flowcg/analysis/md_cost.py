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

Two kinds of MD series come from ``flowcg-reference`` (:func:`load_md_series`): one plain trajectory
(``method=md``), or an *unbiased* multiple-walker run (``method=walkers walkers.build_ps=0
walkers.equilibration_ps=0``): plain Langevin MD of many walkers integrated as one batch, all
started from the same minimised structure. Its frames in time-major order make one series in which
frame k closes k save intervals of one walker, k · steps_per_frame aggregate MD steps; batching
buys aggregate length, not a head start, since every walker must find the rare basins itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowcg.analysis.molecular import Reference
from flowcg.analysis.ramachandran import RamachandranReference, kl_of_histograms, ramachandran_histogram
from flowcg.errors import ConfigError, MissingFileError
from flowcg.sampling.importance import as_numpy


@dataclass
class MDCostCurve:
    """Running KL of an MD series: ``kl[i]`` after ``steps[i]`` MD steps (``frames[i]`` frames)."""

    frames: np.ndarray
    steps: np.ndarray
    kl: np.ndarray


@dataclass
class MDSeries:
    """An unweighted MD series of (φ, ψ) in time order and the MD steps (energy evaluations) per frame."""

    reference: Reference
    steps_per_frame: int
    label: str


def load_md_series(run_dir: str | Path) -> MDSeries:
    """The MD series of a ``flowcg-reference`` run folder: a plain trajectory, or unbiased walkers in
    time-major order (module docstring); biased walkers are refused, their frames are no time series."""
    run_dir = Path(run_dir)
    path = run_dir / "reference.npz"
    if not path.is_file():
        raise MissingFileError(f"reference MD not found: {path} (run flowcg-reference first)")
    with np.load(path) as data:
        if "walker" not in data.files:  # method=md
            return MDSeries(Reference(data["phi"], data["psi"]), int(data["save_interval_steps"]), "plain MD")
        settings = _unbiased_walker_settings(run_dir)
        order = np.lexsort((data["walker"], data["time_ps"]))
        frames = Reference(data["phi"][order], data["psi"][order])
    return MDSeries(frames, round(settings["save_interval_fs"] / settings["timestep_fs"]), f"unbiased MD of {settings['n_walkers']} walkers")


def _unbiased_walker_settings(run_dir: Path) -> dict:
    """The settings of a finished walker run, checked to be unbiased with every step recorded."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise MissingFileError(f"{run_dir}: no metrics.json, the walker run has not finished (rerun flowcg-reference to finish it)")
    settings = json.loads(metrics_path.read_text())["settings"]
    if settings["build_ps"] > 0 or settings["equilibration_ps"] > 0:
        # a bias skews the frames, and steps that record no frame would be missing from the count
        raise ConfigError(f"{run_dir}: an MD series needs unbiased walkers with every step recorded "
                         f"(walkers.build_ps=0 walkers.equilibration_ps=0), got build_ps={settings['build_ps']}, "
                         f"equilibration_ps={settings['equilibration_ps']}")
    return settings


def md_cost_curve(
    phi,
    psi,
    steps_per_frame: int,
    reference: tuple | RamachandranReference | None = None,
    bins: int = 64,
    n_points: int = 60,
    min_frames: int = 10,
) -> MDCostCurve:
    """Running Ramachandran KL(ref‖MD[:k]) at ``n_points`` log-spaced frame counts k.

    Args:
        phi, psi: the MD series (T,) in rad, in time order.
        steps_per_frame: integration steps between saved frames.
        reference: (φ_ref, ψ_ref[, frame weights]) defining the reference histogram, e.g. a
            :class:`~flowcg.analysis.molecular.Reference` of biased walkers, or a compact
            :class:`~flowcg.analysis.ramachandran.RamachandranReference` (its bin masses, e.g. the
            walker reference shipped for the target); default the whole series.
        bins: bins per axis (64 = FAB).
        n_points: number of checkpoints, from ``min_frames`` to T.
    """
    phi, psi = as_numpy(phi), as_numpy(psi)
    if isinstance(reference, RamachandranReference):
        ref_counts = reference.masses[bins]
    else:
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


def running_kl(series: MDSeries, reference: tuple | RamachandranReference) -> MDCostCurve:
    """Running KL64(reference‖series[:k]) of an MD series at 200 log-spaced k (the crossing is resolved to ~7 % there)."""
    return md_cost_curve(series.reference.phi, series.reference.psi, steps_per_frame=series.steps_per_frame, reference=reference,
                         n_points=200)


def md_speedup(model_kl: float, evaluations: int, curve: MDCostCurve, label: str) -> dict:
    """MD steps the running KL ``curve`` of the MD series ``label`` needs to reach ``model_kl``, per model
    energy evaluation (``md_speedup``); if the series never gets there, its length per evaluation bounds
    the speed-up from below (``md_speedup_lower_bound``)."""
    md_steps = md_steps_to_reach(model_kl, curve)
    return {
        "speedup_md_series": label,
        "kl_64_rw_vs_yardstick": model_kl,
        "md_series_final_kl_64": float(curve.kl[-1]),
        "md_steps_to_model_kl": md_steps,
        "md_speedup": md_steps / evaluations if np.isfinite(md_steps) else None,
        "md_speedup_lower_bound": float(curve.steps[-1]) / evaluations if not np.isfinite(md_steps) else None,
    }
