"""Query strategies: which candidate CG frames to send to the oracle next.

Frames are bead positions X ∈ R^{n×3} in nm, stacked as arrays (N, n, 3).

Distance. Two frames are compared by their RMSD after optimal superposition (translation and
proper rotation, Theobald's QCP as implemented by ``mdtraj.rmsd``),

    RMSD(X, Y) = min_{R ∈ SO(3), t ∈ R³} sqrt( (1/n) Σ_I |X_I − R Y_I − t|² )      (nm),

and a frame's distance to a set S is d(X, S) = min_{Y ∈ S} RMSD(X, Y) (:func:`aligned_rmsd_to_set`).

Farthest-point sampling (:func:`farthest_point_sampling`). Given already covered frames E, the
greedy rule x_{k+1} = argmax_X d(X, E ∪ {x_1, …, x_k}) picks frames that spread over the
candidates; it is the classic 2-approximation of the k-center problem (Gonzalez 1985).

Strategies (all return at most m distinct int64 indices into the candidates):

* ``rmsd_coverage`` — the candidates with d(X, training) > threshold, thinned by
  farthest-point sampling from the training set;
* ``diversity`` — farthest-point sampling from the training set, no threshold;
* ``committee`` — query by committee: with K ≥ 2 force fields F^k (kJ/mol/nm), the disagreement
  of a frame is the bead-averaged norm of the per-component standard deviation across members,

      σ_I = ( Σ_{c ∈ xyz} std_k(F^k_{Ic})² )^{1/2},      D(X) = (1/n) Σ_I σ_I      (kJ/mol/nm),

  with the sample standard deviation (K − 1 in the denominator); the m largest D are picked;
* ``random`` — m candidates drawn uniformly without replacement;
* ``importance_sampling`` — m candidates drawn independently (with replacement) with probabilities

      π_i = ε / N + (1 − ε) S_i / Σ_j S_j,

  S_i a score of how wrong the model may be at candidate i: its distance to the training set
  d(X_i, training) (``score="coverage"``: a smooth model's error grows with the distance to its
  data) or the committee disagreement D(X_i) (``score="committee"``); the uniform share ε bounds
  every design weight 1/(N π_i) by 1/ε. From a pool drawn from the equilibrium ensemble (or from
  a density the labels' weights correct), drawing ∝ p·S is the importance-sampling proposal that
  puts labels where the predicted error is, and the design weights 1/(N π_i) that
  :meth:`select_weighted` returns make the weighted labels an equilibrium design again
  (:meth:`flowcg.active.labels.Labels.importance_weighted`; importance-weighted active learning,
  Beygelzimer, Dasgupta & Langford, ICML 2009).

Only the two random strategies know their picks' probabilities; the greedy ones cannot be undone by
weights, and :meth:`QueryStrategy.select_weighted` refuses them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import mdtraj as md
import numpy as np
import torch

from flowcg.errors import ConfigError, build_from_options

__all__ = [
    "STRATEGIES",
    "Committee",
    "Diversity",
    "ForceFunction",
    "ImportanceSampling",
    "QueryStrategy",
    "RMSDCoverage",
    "RandomSelection",
    "aligned_rmsd_to_set",
    "build_strategy",
    "committee_disagreement",
    "farthest_point_sampling",
]

#: Maps bead positions (B, n, 3) in nm to bead forces (B, n, 3) in kJ/mol/nm.
ForceFunction = Callable[[torch.Tensor], torch.Tensor]


def _check_frames(frames_nm: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames_nm)
    if frames.ndim != 3 or frames.shape[2] != 3:
        raise ValueError(f"{name} must have shape (N, n_beads, 3), got {frames.shape}")
    return frames


def _check_same_beads(frames: np.ndarray, reference: np.ndarray, names: tuple[str, str]) -> None:
    if frames.shape[1] != reference.shape[1]:
        raise ValueError(f"{names[0]} has {frames.shape[1]} beads but {names[1]} has {reference.shape[1]}")


def _check_count(m: int) -> None:
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")


@lru_cache(maxsize=None)
def _bead_topology(n_beads: int) -> md.Topology:
    """One virtual-site atom per bead, all in one residue: just enough topology for ``mdtraj.rmsd``."""
    topology = md.Topology()
    residue = topology.add_residue("CG", topology.add_chain())
    for bead in range(n_beads):
        topology.add_atom(f"B{bead}", md.element.virtual, residue)
    return topology


def _centered_trajectory(frames_nm: np.ndarray) -> md.Trajectory:
    """A float32 copy of the frames, centred in place with the RMSD traces cached (``precentered=True``)."""
    trajectory = md.Trajectory(np.array(frames_nm, dtype=np.float32), _bead_topology(frames_nm.shape[1]))
    return trajectory.center_coordinates()


def _min_rmsd(targets: md.Trajectory, references: md.Trajectory) -> np.ndarray:
    """(len(targets),) smallest aligned RMSD (nm) of each target to any reference; loops over the smaller set."""
    if references.n_frames <= targets.n_frames:
        distance = np.full(targets.n_frames, np.inf)
        for frame in range(references.n_frames):
            np.minimum(distance, md.rmsd(targets, references, frame, precentered=True), out=distance)
        return distance
    return np.array([md.rmsd(references, targets, frame, precentered=True).min() for frame in range(targets.n_frames)], dtype=np.float64)


def aligned_rmsd_to_set(frames_nm: np.ndarray, reference_nm: np.ndarray) -> np.ndarray:
    """(N,) smallest RMSD (nm) after optimal superposition of each frame (N, n, 3) to any frame of reference (M, n, 3).

    An empty reference gives +inf for every frame. Computed in float32 (``mdtraj.rmsd``), so values
    near zero carry ~1e-4 nm of rounding.
    """
    frames = _check_frames(frames_nm, "frames_nm")
    reference = _check_frames(reference_nm, "reference_nm")
    _check_same_beads(frames, reference, ("frames_nm", "reference_nm"))
    if len(frames) == 0 or len(reference) == 0:
        return np.full(len(frames), np.inf)
    return _min_rmsd(_centered_trajectory(frames), _centered_trajectory(reference))


def farthest_point_sampling(
    frames_nm: np.ndarray,
    m: int,
    existing_nm: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Greedy farthest-point subset of at most m indices into frames (aligned-RMSD metric).

    With ``existing_nm`` (E, n, 3), the distance of a candidate is to the union of existing and
    already chosen frames, so the first pick is the frame farthest from ``existing``; without it
    (or with an empty one), the first pick is drawn with ``rng`` (or is index 0 if ``rng`` is None).
    Returns int64 indices in pick order; ``m >= len(frames)`` returns all (still in farthest-point
    order).
    """
    frames = _check_frames(frames_nm, "frames_nm")
    _check_count(m)
    if len(frames) == 0:
        return np.empty(0, dtype=np.int64)
    trajectory = _centered_trajectory(frames)
    if existing_nm is None or len(existing_nm) == 0:
        return _farthest_points(trajectory, np.full(len(frames), np.inf), m, rng)
    existing = _check_frames(existing_nm, "existing_nm")
    _check_same_beads(frames, existing, ("frames_nm", "existing_nm"))
    return _farthest_points(trajectory, _min_rmsd(trajectory, _centered_trajectory(existing)), m, rng)


def _farthest_points(trajectory: md.Trajectory, distance_nm: np.ndarray, m: int, rng: np.random.Generator | None) -> np.ndarray:
    """The greedy loop of :func:`farthest_point_sampling` over centred frames, from each frame's
    distance to the existing set.

    ``distance_nm`` all +inf means there is no existing set: the first pick is then drawn with
    ``rng`` (index 0 without one) instead of being the farthest frame.
    """
    n_picks = min(m, trajectory.n_frames)
    if n_picks == 0:
        return np.empty(0, dtype=np.int64)
    distance = np.array(distance_nm, dtype=np.float64)
    if np.isfinite(distance).any():
        pick = int(np.argmax(distance))
    else:
        pick = 0 if rng is None else int(rng.integers(trajectory.n_frames))
    picks = np.empty(n_picks, dtype=np.int64)
    for k in range(n_picks):
        picks[k] = pick
        if k == n_picks - 1:
            break
        np.minimum(distance, md.rmsd(trajectory, trajectory, pick, precentered=True), out=distance)
        distance[pick] = -np.inf  # chosen frames are never picked again, even among duplicates
        pick = int(np.argmax(distance))
    return picks


def committee_disagreement(
    frames_nm: np.ndarray, committee: Sequence[ForceFunction] | None, chunk_size: int = 1024
) -> np.ndarray:
    """(N,) committee disagreement D (kJ/mol/nm, see module docstring) of frames (N, n, 3) nm.

    Members get CPU float32 tensors of at most ``chunk_size`` frames; gradients are allowed (a
    member may differentiate an energy) and the forces are detached.
    """
    frames = _check_frames(frames_nm, "frames_nm")
    if committee is None or len(committee) < 2:
        raise ConfigError(f"query by committee needs a committee of at least 2 force functions, got {0 if committee is None else len(committee)}")
    disagreement = np.empty(len(frames))
    for start in range(0, len(frames), chunk_size):
        chunk = torch.as_tensor(frames[start : start + chunk_size], dtype=torch.float32)
        forces = torch.stack([member(chunk).detach().to(device="cpu", dtype=torch.float32) for member in committee])
        if forces.shape[1:] != chunk.shape:
            raise ValueError(f"committee members must return forces of shape {tuple(chunk.shape)}, got {tuple(forces.shape[1:])}")
        per_bead = forces.std(dim=0).norm(dim=-1)
        disagreement[start : start + len(chunk)] = per_bead.mean(dim=-1).numpy()
    return disagreement


def _checked(candidates_nm: np.ndarray, training_nm: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    candidates = _check_frames(candidates_nm, "candidates_nm")
    training = _check_frames(training_nm, "training_nm")
    _check_same_beads(candidates, training, ("candidates_nm", "training_nm"))
    _check_count(m)
    return candidates, training


class QueryStrategy:
    """Chooses at most m candidates (int64 indices) to label next: distinct ones, except for
    ``importance_sampling``, whose independent draws may repeat a candidate.

    :meth:`select` and :meth:`select_weighted` check the frames and m; a strategy implements
    :meth:`choose` (and, if it draws with known probabilities, :meth:`choose_weighted`).
    """

    name: str
    #: whether :meth:`select_weighted` works: the strategy draws its picks with known probabilities
    knows_probabilities = False
    #: whether it needs the loop's committee of force fields (``loop.committee_size`` ≥ 2)
    needs_committee = False

    def select(
        self,
        candidates_nm: np.ndarray,
        training_nm: np.ndarray,
        m: int,
        rng: np.random.Generator,
        committee: Sequence[ForceFunction] | None = None,
    ) -> np.ndarray:
        return self.choose(*_checked(candidates_nm, training_nm, m), m, rng, committee)

    def select_weighted(
        self,
        candidates_nm: np.ndarray,
        training_nm: np.ndarray,
        m: int,
        rng: np.random.Generator,
        committee: Sequence[ForceFunction] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`select`, with each pick's design weight 1/(N π) (π its probability; any
        common scale), which undoes the choice in a weighted loss. Only random strategies have one."""
        return self.choose_weighted(*_checked(candidates_nm, training_nm, m), m, rng, committee)

    def choose(self, candidates: np.ndarray, training: np.ndarray, m: int, rng: np.random.Generator,
               committee: Sequence[ForceFunction] | None) -> np.ndarray:
        raise NotImplementedError

    def choose_weighted(self, candidates, training, m, rng, committee) -> tuple[np.ndarray, np.ndarray]:
        raise ConfigError(f"strategy '{self.name}' picks its queries deterministically, so no weight can undo the choice; "
                          "use random or importance_sampling")


class RMSDCoverage(QueryStrategy):
    """Candidates farther than ``threshold_nm`` (aligned RMSD) from every training frame, thinned by farthest-point sampling."""

    name = "rmsd_coverage"

    def __init__(self, threshold_nm: float = 0.02):
        if threshold_nm < 0:
            raise ConfigError(f"threshold_nm must be >= 0, got {threshold_nm}")
        self.threshold_nm = threshold_nm

    def choose(self, candidates, training, m, rng, committee):
        if len(candidates) == 0:
            return np.empty(0, dtype=np.int64)
        trajectory = _centered_trajectory(candidates)
        distance = _min_rmsd(trajectory, _centered_trajectory(training)) if len(training) else np.full(len(candidates), np.inf)
        uncovered = np.flatnonzero(distance > self.threshold_nm)
        if len(uncovered) == 0:  # the training data already cover every candidate: nothing to ask
            return np.empty(0, dtype=np.int64)
        # centred afresh: slicing a centred mdtraj Trajectory keeps its unsliced RMSD traces
        thinned = _farthest_points(_centered_trajectory(candidates[uncovered]), distance[uncovered], m, rng)
        return uncovered[thinned].astype(np.int64)


class Committee(QueryStrategy):
    """The m candidates on which the committee's forces disagree most (largest D, in decreasing order)."""

    name = "committee"
    needs_committee = True

    def __init__(self, chunk_size: int = 1024):
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def choose(self, candidates, training, m, rng, committee):
        disagreement = committee_disagreement(candidates, committee, self.chunk_size)
        return np.argsort(-disagreement, kind="stable")[:m].astype(np.int64)


class Diversity(QueryStrategy):
    """Farthest-point sampling of the candidates, starting from the training set."""

    name = "diversity"

    def choose(self, candidates, training, m, rng, committee):
        return farthest_point_sampling(candidates, m, existing_nm=training, rng=rng)


class RandomSelection(QueryStrategy):
    """min(m, N) candidates drawn uniformly without replacement."""

    name = "random"
    knows_probabilities = True

    def choose(self, candidates, training, m, rng, committee):
        return rng.choice(len(candidates), size=min(m, len(candidates)), replace=False).astype(np.int64)

    def choose_weighted(self, candidates, training, m, rng, committee):
        chosen = self.choose(candidates, training, m, rng, committee)
        return chosen, np.ones(len(chosen))  # every candidate equally likely: a uniform design weight


SCORES = ("coverage", "committee")


class ImportanceSampling(QueryStrategy):
    """m independent draws with probability ε/N + (1 − ε) S_i/ΣS (module docstring)."""

    name = "importance_sampling"
    knows_probabilities = True

    def __init__(self, score: str = "coverage", uniform_share: float = 0.2, chunk_size: int = 1024):
        if score not in SCORES:
            raise ConfigError(f"unknown importance-sampling score '{score}'; choose one of {', '.join(SCORES)}")
        if not 0.0 < uniform_share <= 1.0:
            raise ConfigError(f"uniform_share must be in (0, 1], got {uniform_share}")
        self.score, self.uniform_share, self.chunk_size = score, uniform_share, chunk_size
        self.needs_committee = score == "committee"

    def probabilities(self, candidates: np.ndarray, training: np.ndarray, committee: Sequence[ForceFunction] | None) -> np.ndarray:
        """(N,) π over the candidates (sums to 1)."""
        n = len(candidates)
        if self.score == "committee":
            score = committee_disagreement(candidates, committee, self.chunk_size)
        else:
            score = aligned_rmsd_to_set(candidates, training)
        if not np.isfinite(score).all() or score.sum() <= 0:  # no training set yet, or nothing to tell apart
            return np.full(n, 1.0 / n)
        return self.uniform_share / n + (1.0 - self.uniform_share) * score / score.sum()

    def choose(self, candidates, training, m, rng, committee):
        return self.choose_weighted(candidates, training, m, rng, committee)[0]

    def choose_weighted(self, candidates, training, m, rng, committee):
        if len(candidates) == 0 or m == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        pi = self.probabilities(candidates, training, committee)
        chosen = rng.choice(len(candidates), size=m, replace=True, p=pi).astype(np.int64)
        return chosen, 1.0 / (len(candidates) * pi[chosen])


STRATEGIES: dict[str, type[QueryStrategy]] = {
    strategy.name: strategy for strategy in (RMSDCoverage, Committee, Diversity, RandomSelection, ImportanceSampling)
}


def build_strategy(name: str, **options) -> QueryStrategy:
    """The query strategy registered as ``name``, built with ``options`` (e.g. ``threshold_nm``)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown query strategy '{name}'; valid names: {', '.join(sorted(STRATEGIES))}")
    return build_from_options(STRATEGIES[name], "strategy", options)
