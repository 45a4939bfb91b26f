"""Latent densities: normalisation, agreement with torch.distributions, unbiased stratified draws."""

import math

import pytest
import torch
from torch import distributions as D

from flowcg.latent import ConditionalDiagonalGaussian, DiagonalGaussianMixture, StandardNormal


def _random_mixture(dim=2, k=3):
    mixture = DiagonalGaussianMixture(dim, k, init_spread=2.0).double()
    with torch.no_grad():
        mixture.log_stds.add_(0.3 * torch.randn_like(mixture.log_stds))
        mixture.logits.add_(torch.randn_like(mixture.logits))
    return mixture


def test_mixture_prior_is_normalised():
    mixture = _random_mixture(dim=2)
    grid = torch.linspace(-14, 14, 1121, dtype=torch.float64)
    g1, g2 = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = mixture.log_prob(torch.stack([g1.ravel(), g2.ravel()], 1)).exp()
    cell = (grid[1] - grid[0]) ** 2
    assert abs(float(density.sum() * cell) - 1.0) < 1e-6


def test_mixture_matches_torch_distributions():
    mixture = _random_mixture(dim=3, k=4)
    reference = D.MixtureSameFamily(D.Categorical(probs=mixture.weights), D.Independent(D.Normal(mixture.means, mixture.log_stds.exp()), 1))
    z = 3 * torch.randn(50, 3, dtype=torch.float64)
    assert torch.allclose(mixture.log_prob(z), reference.log_prob(z), atol=1e-10)


def test_stratified_draws_give_unbiased_expectations_and_weight_gradients():
    mixture = _random_mixture(dim=1, k=3)
    z, weights = mixture.rsample_stratified(30_000)
    assert torch.allclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    exact_mean = (mixture.weights[:, None] * mixture.means).sum()
    assert abs(float((weights[:, None] * z).sum().detach() - exact_mean.detach())) < 0.05
    (weights[:, None] * z).sum().backward()  # E[z] = Σ π_k μ_k: gradient w.r.t. logits must exist
    assert mixture.logits.grad is not None and mixture.logits.grad.abs().sum() > 0


def test_conditional_gaussian_log_prob_and_initial_standard_normal():
    conditional = ConditionalDiagonalGaussian(2, 3).double()
    z_slow = torch.randn(10, 2, dtype=torch.float64)
    z_fast = torch.randn(10, 3, dtype=torch.float64)
    standard = D.Independent(D.Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1)
    assert torch.allclose(conditional.log_prob(z_fast, z_slow), standard.log_prob(z_fast))  # zero-initialised heads
    with torch.no_grad():
        for p in conditional.parameters():
            p.add_(0.3 * torch.randn_like(p))
    mean, log_std = conditional.mean_and_log_std(z_slow)
    expected = D.Independent(D.Normal(mean, log_std.exp()), 1).log_prob(z_fast)
    assert torch.allclose(conditional.log_prob(z_fast, z_slow), expected, atol=1e-10)


def test_standard_normal_fast_density_and_empty_fast_block():
    fast = StandardNormal(2, 0)
    z_slow = torch.randn(4, 2)
    assert fast.rsample(z_slow).shape == (4, 0)
    assert torch.equal(fast.log_prob(fast.rsample(z_slow), z_slow), torch.zeros(4))
    assert abs(float(StandardNormal(1, 1).log_prob(torch.zeros(1, 1), z_slow[:1])) + 0.5 * math.log(2 * math.pi)) < 1e-6


def test_wrapped_mixture_is_a_normalised_density_on_the_circle():
    mixture = DiagonalGaussianMixture(1, 3, init_spread=3.0, init_std=1.5, seed=4, periodic=True).double()
    grid = torch.linspace(-math.pi, math.pi, 20_001, dtype=torch.float64)[:-1, None]
    integral = mixture.log_prob(grid).exp().sum() * (2 * math.pi / 20_000)
    assert abs(float(integral.detach()) - 1.0) < 1e-9
    z, weights = mixture.rsample_stratified(300)
    assert (z >= -math.pi).all() and (z < math.pi).all() and torch.allclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    # periodic: the density at −π and at π agree (no seam)
    ends = torch.tensor([[-math.pi], [math.pi]], dtype=torch.float64)
    assert torch.allclose(*mixture.log_prob(ends))


def _known_wrapped_mixture() -> DiagonalGaussianMixture:
    """Two wrapped components on the torus, one straddling the ±π seam."""
    truth = DiagonalGaussianMixture(2, 2, periodic=True).double()
    with torch.no_grad():
        truth.means.copy_(torch.tensor([[3.0, -0.5], [-1.2, 1.0]]))
        truth.log_stds.copy_(torch.log(torch.tensor([[0.4, 0.3], [0.25, 0.5]])))
        truth.logits.copy_(torch.log(torch.tensor([0.7, 0.3])))
    return truth


def _assert_recovers(fitted: DiagonalGaussianMixture, truth: DiagonalGaussianMixture, tol: float):
    order = torch.argsort(fitted.weights, descending=True)
    mean_error = torch.remainder(fitted.means[order] - truth.means + math.pi, 2 * math.pi) - math.pi
    assert mean_error.abs().max() < tol, fitted.means
    assert (fitted.log_stds[order].exp() - truth.log_stds.exp()).abs().max() < tol
    assert (fitted.weights[order] - truth.weights).abs().max() < tol


def test_weighted_em_recovers_a_wrapped_mixture_across_the_seam():
    """Unweighted draws: EM finds the components, including the one that wraps around ±π."""
    truth = _known_wrapped_mixture()
    torch.manual_seed(0)
    z = truth.sample(20_000)
    fitted = DiagonalGaussianMixture(2, 2, periodic=True).double()
    info = fitted.fit_weighted(z, torch.ones(len(z)))
    _assert_recovers(fitted, truth, tol=0.03)
    assert abs(info["log_likelihood"] - float(truth.log_prob(z).mean().detach())) < 0.01


def test_weighted_em_uses_the_weights():
    """Uniform points on the torus weighted by the true density: the weights alone carry the mixture."""
    truth = _known_wrapped_mixture()
    torch.manual_seed(1)
    z = (torch.rand(100_000, 2, dtype=torch.float64) * 2 - 1) * math.pi
    fitted = DiagonalGaussianMixture(2, 2, periodic=True).double()
    fitted.fit_weighted(z, truth.log_prob(z).exp())
    _assert_recovers(fitted, truth, tol=0.05)


def test_weighted_em_statistics_equal_a_brute_force_sum_over_images():
    """The E-step's closed form (nearest image + e_j terms) against explicit sums over wraps m = −6…6,
    for σ from 0.05 to 2 rad (both the |j| ≤ 1 and the |j| ≤ 2 branches) and points near the seam."""
    torch.manual_seed(3)
    mixture = DiagonalGaussianMixture(2, 3, periodic=True).double()
    z = (torch.rand(500, 2, dtype=torch.float64) * 2 - 1) * math.pi
    w = torch.rand(500, dtype=torch.float64)
    w = w / w.sum()
    means = torch.tensor([[3.1, -3.1], [0.0, 1.0], [-2.0, 2.5]], dtype=torch.float64)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    for log_stds in (torch.log(torch.tensor([[0.05, 0.4], [0.9, 0.3], [0.2, 1.0]], dtype=torch.float64)),
                     torch.log(torch.tensor([[2.0, 0.4], [1.5, 0.3], [0.2, 1.0]], dtype=torch.float64))):
        ll, mass, offset_sum, square_sum = mixture._em_statistics(z, w, means, log_stds, logits, chunk_size=64)
        shifts = 2 * math.pi * torch.arange(-6, 7, dtype=torch.float64)
        unwrapped = z[:, None, :, None] + shifts  # (B, 1, dim, M)
        diff = unwrapped - means[..., None]
        log_terms = -0.5 * (diff / log_stds.exp()[..., None]) ** 2 - log_stds[..., None] - 0.5 * math.log(2 * math.pi)
        per_dim = torch.logsumexp(log_terms, -1)
        log_joint = per_dim.sum(-1) + torch.log_softmax(logits, 0)
        log_p = torch.logsumexp(log_joint, 1)
        resp = torch.softmax(log_joint, 1) * w[:, None]
        rho = torch.exp(log_terms - per_dim[..., None])
        assert abs(ll - float(w @ log_p)) < 1e-12
        torch.testing.assert_close(mass, resp.sum(0), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(offset_sum, torch.einsum("bk,bkdm->kd", resp, rho * diff), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(square_sum, torch.einsum("bk,bkdm->kd", resp, rho * diff**2), rtol=1e-10, atol=1e-13)


def test_weighted_em_statistics_of_euclidean_components_equal_direct_sums():
    """The matrix-product E-step of non-periodic components against the direct (B, K, dim) sums,
    with components far apart (responsibilities that underflow) and narrow ones."""
    torch.manual_seed(5)
    mixture = DiagonalGaussianMixture(2, 3).double()
    z = torch.randn(700, 2, dtype=torch.float64) * 20
    w = torch.rand(700, dtype=torch.float64)
    w = w / w.sum()
    means = torch.tensor([[30.0, -25.0], [0.0, 1.0], [-20.0, 22.5]], dtype=torch.float64)
    log_stds = torch.log(torch.tensor([[0.05, 1.3], [3.0, 8.0], [1.0, 0.2]], dtype=torch.float64))
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    ll, mass, offset_sum, square_sum = mixture._em_statistics(z, w, means, log_stds, logits, chunk_size=64)
    diff = z[:, None, :] - means  # (B, K, dim)
    log_joint = (-0.5 * (diff / log_stds.exp()) ** 2 - log_stds - 0.5 * math.log(2 * math.pi)).sum(-1) + torch.log_softmax(logits, 0)
    resp = torch.softmax(log_joint, 1) * w[:, None]
    assert abs(ll - float(w @ torch.logsumexp(log_joint, 1))) < 1e-9
    torch.testing.assert_close(mass, resp.sum(0), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(offset_sum, torch.einsum("bk,bkd->kd", resp, diff), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(square_sum, torch.einsum("bk,bkd->kd", resp, diff**2), rtol=1e-9, atol=1e-11)


def test_weighted_em_does_not_depend_on_the_block_size():
    truth = _known_wrapped_mixture()
    torch.manual_seed(4)
    z = truth.sample(3_000)
    w = torch.rand(3_000)
    fits = []
    for chunk_size in (7, 1000, 10_000):
        fitted = DiagonalGaussianMixture(2, 4, periodic=True).double()
        fitted.fit_weighted(z, w, n_iter=50, chunk_size=chunk_size)
        fits.append(torch.cat([fitted.means.flatten(), fitted.log_stds.flatten(), fitted.logits]))
    torch.testing.assert_close(fits[0], fits[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(fits[0], fits[2], rtol=0, atol=1e-10)


def test_cauchy_dims_match_torch_distributions_and_keep_the_state_dict():
    mask = torch.tensor([False, True, False])
    conditional = ConditionalDiagonalGaussian(2, 3, cauchy_mask=mask).double()
    with torch.no_grad():
        for p in conditional.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z_slow, z_fast = torch.randn(10, 2, dtype=torch.float64), 5 * torch.randn(10, 3, dtype=torch.float64)
    mean, log_std = conditional.mean_and_log_std(z_slow)
    expected = (D.Normal(mean[:, [0, 2]], log_std[:, [0, 2]].exp()).log_prob(z_fast[:, [0, 2]]).sum(-1)
                + D.Cauchy(mean[:, 1], log_std[:, 1].exp()).log_prob(z_fast[:, 1]))
    assert torch.allclose(conditional.log_prob(z_fast, z_slow), expected, atol=1e-10)
    # the mask follows from the configuration: the same weights load into either kind
    assert set(conditional.state_dict()) == set(ConditionalDiagonalGaussian(2, 3).state_dict())
    draws = StandardNormal(1, 2, cauchy_mask=torch.tensor([True, False])).rsample(torch.zeros(40_000, 1))
    quartiles = torch.quantile(draws, torch.tensor([0.25, 0.75]), dim=0)
    assert torch.allclose(quartiles[:, 0], torch.tensor([-1.0, 1.0]), atol=0.05)  # standard Cauchy
    assert torch.allclose(quartiles[:, 1], torch.tensor([-0.6745, 0.6745]), atol=0.05)  # standard normal


def test_a_cauchy_latent_puts_mass_at_the_circle_seam():
    """Through τ = 2 atan(z), C(0, 1) is uniform on the circle; N(0, 1) vanishes at the seam ±π."""
    from flowcg.flows.circular import CircleEmbedding

    embedding = CircleEmbedding(torch.tensor([True]))
    tau = torch.tensor([[0.0], [2.5], [math.pi - 1e-3]], dtype=torch.float64)
    z, inverse_log_det = embedding.inverse(tau)  # log q(τ) = log p(z) + log|dz/dτ|
    zero = torch.zeros(3, 1, dtype=torch.float64)
    on_circle = {kind: StandardNormal(1, 1, cauchy_mask=torch.tensor([kind == "cauchy"])).double().log_prob(z, zero) + inverse_log_det
                 for kind in ("cauchy", "gaussian")}
    assert torch.allclose(on_circle["cauchy"], torch.full((3,), -math.log(2 * math.pi), dtype=torch.float64), atol=1e-9)
    assert on_circle["gaussian"][2] < -1e5  # a zero of q at the seam, where a rotor's barrier can still hold mass


def test_defensive_mixture_of_gaussian_and_cauchy():
    weight = 0.2
    fast = ConditionalDiagonalGaussian(1, 2, cauchy_mask=torch.tensor([True, False]), cauchy_weight=weight).double()
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z_slow, z_fast = torch.randn(20, 1, dtype=torch.float64), 4 * torch.randn(20, 2, dtype=torch.float64)
    mean, log_std = fast.mean_and_log_std(z_slow)
    scale = log_std.exp()
    mixture = torch.logaddexp(math.log(1 - weight) + D.Normal(mean[:, 0], scale[:, 0]).log_prob(z_fast[:, 0]),
                              math.log(weight) + D.Cauchy(mean[:, 0], scale[:, 0]).log_prob(z_fast[:, 0]))
    expected = mixture + D.Normal(mean[:, 1], scale[:, 1]).log_prob(z_fast[:, 1])
    assert torch.allclose(fast.log_prob(z_fast, z_slow), expected, atol=1e-10)
    # draws: a standard-normal body with a share `weight` of Cauchy draws, visible beyond |z| = 6
    draws = StandardNormal(1, 1, cauchy_mask=torch.tensor([True]), cauchy_weight=weight).rsample(torch.zeros(200_000, 1))
    beyond = float((draws.abs() > 6).double().mean())
    assert abs(beyond - weight * 2 * math.atan(1 / 6) / math.pi) < 0.002  # P(|C| > 6) = (2/π) atan(1/6)
    with pytest.raises(ValueError, match="cauchy_weight"):
        StandardNormal(1, 1, cauchy_mask=torch.tensor([True]), cauchy_weight=1.5)
