"""Importance-sampling estimators against known answers."""

import math

import numpy as np
import pytest
import torch

from flowcg.sampling import kish_ess, kl_estimate, log_z_estimate, pareto_khat, reweighted_mean, tempering_exponent


def test_uniform_weights_give_ess_one_and_zero_kl():
    log_w = np.full(1000, -3.7)
    assert abs(kish_ess(log_w) - 1.0) < 1e-12
    assert abs(kl_estimate(log_w)) < 1e-12
    assert abs(log_z_estimate(log_w) + 3.7) < 1e-12


def test_single_dominant_weight_gives_ess_one_over_n():
    log_w = np.array([0.0] + [-1e4] * 99)
    assert abs(kish_ess(log_w) - 0.01) < 1e-12


def test_clipped_ess_tames_a_single_outlier():
    rng = np.random.default_rng(0)
    log_w = rng.normal(0, 0.1, 100_000)
    log_w[0] = 50.0
    assert kish_ess(log_w) < 1e-3
    assert kish_ess(log_w, clip_fraction=1e-4) > 0.9


def test_log_z_of_a_gaussian_by_importance_sampling():
    # q = N(0, 2²), p̃(x) = exp(−x²/2): Z = √(2π)
    q = torch.distributions.Normal(0.0, 2.0)
    x = q.sample((200_000,))
    log_w = -0.5 * x**2 - q.log_prob(x)
    assert abs(log_z_estimate(log_w) - 0.5 * math.log(2 * math.pi)) < 0.01
    assert abs(float(reweighted_mean(x**2, log_w)) - 1.0) < 0.03


def test_nonfinite_weights_count_as_zero():
    log_w = np.array([0.0, 0.0, np.nan, np.inf, -np.inf])
    assert abs(kish_ess(log_w) - 2 / 5) < 1e-12
    assert abs(log_z_estimate(log_w) - math.log(2 / 5)) < 1e-12


def test_truncated_weights_bound_one_draw_and_leave_even_weights_alone():
    from flowcg.sampling import truncated_weights

    n = 10_000
    log_w = np.zeros(n)
    np.testing.assert_allclose(truncated_weights(log_w), np.full(n, 1 / n))
    log_w[0] = 50.0  # one draw with almost all the self-normalised mass
    log_w[1] = np.nan
    w = truncated_weights(log_w)
    assert w[1] == 0.0 and np.isclose(w.sum(), 1.0)
    assert w[0] == pytest.approx(1 / np.sqrt(n - 1), rel=1e-6)  # its share is capped at 1/sqrt(N)
    assert np.allclose(w[2:], w[2])


def test_pareto_khat_reads_the_tail_index_of_the_weights():
    rng = np.random.default_rng(3)
    for xi in (0.3, 0.7, 1.0):
        weights = rng.pareto(1.0 / xi, 100_000) + 1.0  # Pareto tail of index ξ
        assert abs(pareto_khat(np.log(weights)) - xi) < 0.1
    assert pareto_khat(np.zeros(100)) == 0.0  # equal weights
    assert pareto_khat(np.r_[rng.normal(0, 0.1, 999), -np.inf]) < 0.2  # a failed energy is a zero weight
    with pytest.raises(ValueError, match="25 finite"):
        pareto_khat(np.zeros(10))


def test_tempering_exponent_is_the_largest_that_keeps_the_ess():
    log_w = np.random.default_rng(0).normal(0.0, 3.0, 10_000)
    assert kish_ess(log_w) < 0.02
    alpha = tempering_exponent(log_w, min_ess=0.3)
    assert 0.0 < alpha < 1.0
    assert kish_ess(alpha * log_w) >= 0.3 > kish_ess((alpha + 0.01) * log_w)
    assert tempering_exponent(0.1 * log_w, min_ess=0.3) == 1.0  # the full weights already keep it
    with pytest.raises(ValueError, match="min_ess"):
        tempering_exponent(log_w, min_ess=0.0)
