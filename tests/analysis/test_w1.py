import numpy as np
import pytest
import torch

from flowcg.analysis.w1 import fit_cg_tica, pairwise_distance_features, project_tica, w1_projections, w1_samples, w1_tica

SHIFT = np.array([0.6, -0.8])  # |shift| = 1


def test_translated_copy_has_w1_equal_to_the_shift_norm():
    # Moving every point by the same vector is an optimal coupling, so the empirical W1 is exact.
    a = np.random.default_rng(0).normal(size=(400, 2))
    assert w1_samples(a, a + SHIFT) == pytest.approx(1.0, abs=1e-9)
    assert w1_samples(a, a) == pytest.approx(0.0, abs=1e-7)  # ot.dist's Gram-matrix rounding


def test_shifted_gaussians():
    # Equal-covariance Gaussians: W1 = |Δμ| in 2-D, and |Δμ_k| for each 1-D marginal.
    rng = np.random.default_rng(1)
    a = rng.normal(scale=0.3, size=(1500, 2))
    b = rng.normal(scale=0.3, size=(1500, 2)) + SHIFT
    result = w1_projections(a, b, max_samples=1500)
    assert result["w1"] == pytest.approx(1.0, rel=0.03)
    assert result["w1_tic0"] == pytest.approx(0.6, abs=0.03)
    assert result["w1_tic1"] == pytest.approx(0.8, abs=0.03)
    assert (result["n_model"], result["n_reference"]) == (1500, 1500)


def test_subsampling_is_seeded_and_capped():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3000, 2)), rng.normal(size=(2500, 2)) + SHIFT
    first, again = w1_samples(a, b, max_samples=300, seed=4), w1_samples(a, b, max_samples=300, seed=4)
    assert first == again
    assert first != w1_samples(a, b, max_samples=300, seed=5)
    assert first == pytest.approx(1.0, rel=0.25)
    with pytest.raises(ValueError, match="same dimension"):
        w1_samples(a, b[:, :1])


def test_weighted_model_points_are_the_reweighted_ensemble():
    """Points drawn from a biased density and weighted by target/biased score as the target's sample:
    a wide normal N(0, 2²) reweighted to N(1, 0.5²) against an exact N(1, 0.5²) sample."""
    rng = np.random.default_rng(3)
    biased = rng.normal(scale=2.0, size=(40_000, 2))
    log_w = (-0.5 * ((biased - 1) / 0.5) ** 2 + 0.5 * (biased / 2.0) ** 2).sum(axis=1)
    target = rng.normal(loc=1.0, scale=0.5, size=(2000, 2))
    weighted = w1_projections(biased, target, max_samples=2000, model_log_weights=log_w)
    unweighted = w1_projections(biased, target, max_samples=2000)
    assert weighted["w1"] < 0.1 < unweighted["w1"]
    assert max(weighted["w1_tic0"], weighted["w1_tic1"]) < 0.05
    # equal weights are the unweighted measure (the 1-D values exactly)
    equal = w1_projections(biased[:500], target[:500], model_log_weights=np.zeros(500))
    assert equal["w1_tic0"] == pytest.approx(w1_projections(biased[:500], target[:500])["w1_tic0"], abs=1e-12)
    with pytest.raises(ValueError, match="one log weight per model point"):
        w1_projections(biased, target, model_log_weights=log_w[:10])


def random_walk_trajectory(n_frames, seed):
    """A 4-bead CG trajectory (T, 4, 3) nm: a slowly drifting end bead on a fast-jiggling chain."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_frames, 4, 3))
    x[:, :, 0] = np.arange(4) * 0.38
    x += 0.02 * rng.normal(size=x.shape)
    slow = np.cumsum(rng.normal(scale=0.01, size=n_frames))
    x[:, 3, 1] += slow - slow.mean()
    return x


def test_w1_in_tica_space():
    reference = [random_walk_trajectory(1500, seed) for seed in (0, 1)]
    tica = fit_cg_tica(reference, lag=10)
    assert pairwise_distance_features(reference[0]).shape == (1500, 6)
    assert project_tica(reference[0], tica).shape == (1500, 2)
    same = w1_tica(reference[0][:400], reference[0][:400], tica, max_samples=500)
    assert same["w1"] == pytest.approx(0.0, abs=1e-7) and same["w1_tic0"] == pytest.approx(0.0, abs=1e-12)
    # A model whose end bead sits further out differs along the slow TIC; torch frames and
    # (n_saved, B, n, 3) batches are accepted as they come from the Langevin sampler.
    model = np.stack(reference, axis=1).copy()
    model[:, :, 3, 1] += 0.2
    result = w1_tica(torch.as_tensor(model), reference[0], tica, max_samples=500)
    assert result["n_model"] == 3000 and result["w1"] > 0.5 and result["w1_tic0"] > 0.5
    assert set(result) == {"w1", "w1_tic0", "w1_tic1", "n_model", "n_reference"}
    with pytest.raises(ValueError, match="longer than the lag"):
        fit_cg_tica(reference[0][:5], lag=10)
    with pytest.raises(ValueError, match="list of them"):
        fit_cg_tica(model, lag=10)
