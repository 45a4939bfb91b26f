import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from flowcg.active.selection import (
    STRATEGIES,
    Committee,
    Diversity,
    ImportanceSampling,
    RandomSelection,
    RMSDCoverage,
    aligned_rmsd_to_set,
    build_strategy,
    committee_disagreement,
    farthest_point_sampling,
)

N_BEADS = 5


def rigidly_moved(frame_nm, seed):
    """The frame rotated by a random rotation about the origin and shifted by a random vector (nm)."""
    rotation = Rotation.random(random_state=seed).as_matrix()
    shift = np.random.default_rng(seed).normal(size=3)
    return frame_nm @ rotation.T + shift


@pytest.fixture
def toy_set():
    """A training set of small perturbations of one chain, and candidates at growing distance from it.

    Candidate k is the reference chain with bead 0 displaced by ``offsets_nm[k]`` along z, then
    rigidly moved, so its aligned RMSD to the training set grows with the offset.
    """
    rng = np.random.default_rng(0)
    reference = rng.normal(scale=0.3, size=(N_BEADS, 3))
    training = reference + rng.normal(scale=0.005, size=(8, N_BEADS, 3))
    offsets_nm = np.array([0.01, 0.4, 0.02, 0.8, 0.25, 0.0])
    candidates = np.repeat(reference[None], len(offsets_nm), axis=0)
    candidates[:, 0, 2] += offsets_nm
    candidates = np.stack([rigidly_moved(frame, seed) for seed, frame in enumerate(candidates)])
    return candidates, training, offsets_nm


def test_aligned_rmsd_is_invariant_to_rigid_motion():
    frame = np.random.default_rng(1).normal(scale=0.4, size=(N_BEADS, 3))
    moved = np.stack([rigidly_moved(frame, seed) for seed in range(4)])
    # float32 QCP: near zero the RMSD carries ~1e-4 nm of rounding (cancellation under the sqrt).
    assert aligned_rmsd_to_set(moved, frame[None]) == pytest.approx(np.zeros(4), abs=1e-3)


def test_aligned_rmsd_of_a_scaled_triangle_is_the_hand_computed_value():
    # Centred, the triangle has squared radii 2/9, 5/9, 5/9; doubled, the best rotation is the
    # identity and the RMSD is sqrt(mean |x_c|²) = sqrt(4/9) = 2/3 nm. The nearest reference wins.
    triangle = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    reference = np.stack([triangle, 5.0 * triangle])
    doubled = rigidly_moved(2.0 * triangle, seed=3)
    assert aligned_rmsd_to_set(doubled[None], reference) == pytest.approx([2.0 / 3.0], rel=1e-5)
    assert aligned_rmsd_to_set(doubled[None], np.empty((0, 3, 3))) == [np.inf]


def test_aligned_rmsd_loops_over_either_set_alike(toy_set):
    candidates, training, _ = toy_set
    one_way = aligned_rmsd_to_set(candidates, training)
    pairwise = np.stack([aligned_rmsd_to_set(training, frame[None]) for frame in candidates])
    assert one_way == pytest.approx(pairwise.min(axis=1), abs=1e-6)
    assert aligned_rmsd_to_set(candidates[:2], training) == pytest.approx(one_way[:2], abs=1e-6)


def test_shapes_are_validated(toy_set):
    candidates, training, _ = toy_set
    with pytest.raises(ValueError, match="shape"):
        aligned_rmsd_to_set(candidates[0], training)
    with pytest.raises(ValueError, match="beads"):
        Diversity().select(candidates[:, :3], training, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="m must be >= 0"):
        farthest_point_sampling(candidates, -1)


def test_farthest_point_sampling_picks_distinct_frames_farthest_first(toy_set):
    candidates, training, offsets_nm = toy_set
    picks = farthest_point_sampling(candidates, 3, existing_nm=training)
    assert picks.dtype == np.int64 and len(picks) == 3 and len(set(picks.tolist())) == 3
    assert picks[0] == np.argmax(offsets_nm)
    everything = farthest_point_sampling(candidates, 100, rng=np.random.default_rng(0))
    assert sorted(everything.tolist()) == list(range(len(candidates)))
    assert farthest_point_sampling(candidates, 2)[0] == 0
    duplicates = np.repeat(candidates[:1], 4, axis=0)
    assert sorted(farthest_point_sampling(duplicates, 4).tolist()) == [0, 1, 2, 3]


def test_coverage_and_diversity_pick_the_frame_farthest_from_training(toy_set):
    candidates, training, offsets_nm = toy_set
    rng = np.random.default_rng(0)
    coverage = RMSDCoverage(threshold_nm=0.05).select(candidates, training, 10, rng)
    diversity = Diversity().select(candidates, training, 2, rng)
    assert coverage[0] == diversity[0] == np.argmax(offsets_nm)
    # Only the candidates displaced by 0.25, 0.4 and 0.8 nm lie beyond 0.05 nm of aligned RMSD.
    assert sorted(coverage.tolist()) == [1, 3, 4]
    assert RMSDCoverage(threshold_nm=0.05).select(candidates, training, 2, rng).tolist() == coverage[:2].tolist()
    assert len(diversity) == 2


def test_committee_picks_the_frames_where_members_disagree():
    rng = np.random.default_rng(0)
    frames = rng.normal(scale=0.3, size=(50, N_BEADS, 3))
    contested = [7, 21, 42]
    frames[contested, 0, 0] = [3.0, 2.0, 4.0]  # far out along x on bead 0

    def harmonic(x):
        return -x

    def harmonic_plus_a_far_field(x):
        # Differs from `harmonic` only where bead 0 is beyond 1 nm along x, by an amount growing with it.
        extra = torch.zeros_like(x)
        extra[:, 0, 0] = torch.relu(x[:, 0, 0] - 1.0)
        return -x + extra

    committee = [harmonic, harmonic_plus_a_far_field]
    disagreement = committee_disagreement(frames, committee, chunk_size=16)
    assert np.count_nonzero(disagreement) == 3
    # Two members, a difference Δ on one component of one bead: std = |Δ|/sqrt(2), mean over beads.
    assert disagreement[42] == pytest.approx(3.0 / np.sqrt(2) / N_BEADS, rel=1e-6)
    picks = Committee().select(frames, frames[:5], 2, rng, committee=committee)
    assert picks.tolist() == [42, 7]
    with pytest.raises(ValueError, match="at least 2"):
        Committee().select(frames, frames[:5], 2, rng, committee=[harmonic])
    with pytest.raises(ValueError, match="at least 2"):
        Committee().select(frames, frames[:5], 2, rng)


def test_random_selection_is_distinct_and_reproducible(toy_set):
    candidates, training, _ = toy_set
    first = RandomSelection().select(candidates, training, 4, np.random.default_rng(7))
    again = RandomSelection().select(candidates, training, 4, np.random.default_rng(7))
    assert first.dtype == np.int64 and len(set(first.tolist())) == 4
    assert first.tolist() == again.tolist()
    assert sorted(RandomSelection().select(candidates, training, 99, np.random.default_rng(0)).tolist()) == list(range(6))


def test_build_strategy_by_name():
    assert set(STRATEGIES) == {"rmsd_coverage", "committee", "diversity", "random", "importance_sampling"}
    strategy = build_strategy("rmsd_coverage", threshold_nm=0.1)
    assert isinstance(strategy, RMSDCoverage) and strategy.threshold_nm == 0.1
    with pytest.raises(ValueError, match="unknown query strategy 'nope'.*committee, diversity, importance_sampling, random, rmsd_coverage"):
        build_strategy("nope")


def test_coverage_thins_the_uncovered_frames_as_diversity_does():
    # Regression: a centred mdtraj Trajectory keeps its unsliced RMSD traces when sliced, so the
    # uncovered subset must be centred afresh; coverage then equals diversity over that subset.
    rng = np.random.default_rng(7)
    candidates, training = rng.normal(scale=0.1, size=(300, 5, 3)), rng.normal(scale=0.1, size=(40, 5, 3))
    threshold = float(np.median(aligned_rmsd_to_set(candidates, training)))
    uncovered = np.flatnonzero(aligned_rmsd_to_set(candidates, training) > threshold)
    picks = build_strategy("rmsd_coverage", threshold_nm=threshold).select(candidates, training, 10, np.random.default_rng(0))
    expected = farthest_point_sampling(candidates[uncovered], 10, existing_nm=training)
    np.testing.assert_array_equal(picks, uncovered[expected])


def test_coverage_asks_nothing_when_the_training_frames_cover_every_candidate():
    # Regression: an empty uncovered set crashed mdtraj's centring (IndexError) in round 3 of an
    # al_aldp run; a round with nothing uncovered spends no labels.
    rng = np.random.default_rng(3)
    training = rng.normal(scale=0.1, size=(50, 5, 3))
    candidates = training[:20] + rng.normal(scale=1e-4, size=(20, 5, 3))
    picks = build_strategy("rmsd_coverage", threshold_nm=0.01).select(candidates, training, 5, np.random.default_rng(0))
    assert picks.dtype == np.int64 and len(picks) == 0


def test_importance_sampling_draws_by_its_probabilities_and_returns_their_inverse(toy_set):
    candidates, training, _ = toy_set
    strategy = ImportanceSampling(score="coverage", uniform_share=0.2)
    pi = strategy.probabilities(candidates, training, None)
    distance = aligned_rmsd_to_set(candidates, training)
    np.testing.assert_allclose(pi, 0.2 / len(candidates) + 0.8 * distance / distance.sum(), rtol=1e-12)
    assert pi.sum() == pytest.approx(1.0) and pi.min() >= 0.2 / len(candidates)
    picks, design = strategy.select_weighted(candidates, training, 20_000, np.random.default_rng(3))
    frequency = np.bincount(picks, minlength=len(candidates)) / len(picks)
    np.testing.assert_allclose(frequency, pi, atol=0.01)
    np.testing.assert_allclose(design, 1.0 / (len(candidates) * pi[picks]))
    assert design.max() <= 1.0 / 0.2 + 1e-12  # the uniform share bounds every design weight
    assert strategy.select(candidates, training, 5, np.random.default_rng(3)).tolist() == picks[:5].tolist()


def test_weighted_picks_of_a_skewed_preference_give_equilibrium_averages():
    """Pool s ~ q = N(0.5, 1.3²), target p = N(0, 1), picks ∝ 0.2/N + 0.8|s|/Σ|s|: the labels
    weighted by p̃/q × 1/(Nπ) average s² to E_p[s²] = 1, and the picks alone do not."""
    rng = np.random.default_rng(4)
    pool = rng.normal(0.5, 1.3, size=(200_000, 1))
    frames = np.concatenate([pool[:, :, None], np.zeros((len(pool), 1, 2))], axis=2)  # one bead: only the score matters
    strategy = ImportanceSampling(score="committee", uniform_share=0.2)
    committee = [lambda x: torch.zeros_like(x), lambda x: x.abs() * np.sqrt(2) * torch.tensor([1.0, 0.0, 0.0])]
    picks, design = strategy.select_weighted(frames, frames[:0], 100_000, rng, committee)
    s = pool[picks, 0]
    log_w = -0.5 * s**2 - (-0.5 * ((s - 0.5) / 1.3) ** 2 - np.log(1.3))
    weights = np.exp(log_w) * design
    assert np.sum(weights * s**2) / weights.sum() == pytest.approx(1.0, abs=0.03)
    assert np.mean(s**2) > 2.0


def test_greedy_strategies_refuse_weighted_picks(toy_set):
    candidates, training, _ = toy_set
    with pytest.raises(ValueError, match="deterministically"):
        RMSDCoverage().select_weighted(candidates, training, 2, np.random.default_rng(0))
    picks, design = RandomSelection().select_weighted(candidates, training, 3, np.random.default_rng(0))
    assert len(set(picks.tolist())) == 3 and design.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown importance-sampling score"):
        build_strategy("importance_sampling", score="psychic")
    with pytest.raises(ValueError, match="uniform_share"):
        build_strategy("importance_sampling", uniform_share=0.0)
