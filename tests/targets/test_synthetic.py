"""Synthetic targets: exact answers checked independently, and clear shape errors."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from flowcg.errors import ConfigError
from flowcg.targets import TargetInputError, UnknownTargetError, load_target
from flowcg.targets.synthetic import GaussianMixture, SlowFastGaussianMixture


def test_double_well_log_z_against_2d_grid_quadrature():
    target = load_target("double_well")
    grid1, grid2 = torch.linspace(-6, 6, 2401, dtype=torch.float64), torch.linspace(-10, 10, 2001, dtype=torch.float64)
    g1, g2 = torch.meshgrid(grid1, grid2, indexing="ij")
    u = target.energy(torch.stack([g1.ravel(), g2.ravel()], 1))
    z = torch.exp(-u).sum() * (grid1[1] - grid1[0]) * (grid2[1] - grid2[0])
    assert abs(math.log(float(z)) - target.log_z_exact) < 1e-6
    assert abs(target.x1_mass(-6, 0) + target.x1_mass(0, 6) - 1) < 1e-9


def test_double_well_exact_samples_follow_the_x1_marginal():
    target = load_target("double_well")
    x = target.sample_exact(200_000, seed=3)
    assert abs(float((x[:, 0] < 0).double().mean()) - target.x1_mass(-6, 0)) < 0.002
    assert abs(float(x[:, 1].var()) - 1.0) < 0.02


def test_gaussian_mixture_matches_torch_distributions():
    rng = np.random.default_rng(0)
    means, stds, weights = rng.normal(size=(4, 3)), rng.uniform(0.5, 2, size=(4, 3)), rng.uniform(1, 2, 4)
    target = GaussianMixture(means, stds, weights)
    reference = D.MixtureSameFamily(
        D.Categorical(probs=torch.as_tensor(weights / weights.sum())), D.Independent(D.Normal(torch.as_tensor(means), torch.as_tensor(stds)), 1)
    )
    x = torch.randn(100, 3, dtype=torch.float64) * 3
    assert torch.allclose(-target.energy(x), reference.log_prob(x), atol=1e-10)


def test_slow_fast_mixture_density_is_the_exact_product():
    rng = np.random.default_rng(1)
    target = SlowFastGaussianMixture(rng.uniform(-1, 1, (3, 2)), rng.normal(size=(2, 2)), slow_std=0.3, fast_std=0.2)
    x = target.sample_exact(100, seed=0)
    x_slow, x_fast = x[:, :2], x[:, 2:]
    slow = GaussianMixture(target.slow.means, 0.3)
    expected = slow.log_prob_unnormalized(x_slow) + D.Independent(D.Normal(x_slow @ target.coupling.T, 0.2), 1).log_prob(x_fast)
    assert torch.allclose(-target.energy(x), expected, atol=1e-10)  # a product of normalised densities: Z = 1


def test_configured_targets_have_the_published_shapes():
    from omegaconf import OmegaConf

    from flowcg.cli.common import CONFIG_DIR

    gmm20 = load_target("gmm20", **OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/target/gmm20.yaml").options))
    gmm40 = load_target("gmm40", **OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/target/gmm40.yaml").options))
    assert gmm20.event_shape == (20,) and gmm20.n_modes == 3
    assert gmm40.event_shape == (2,) and gmm40.n_modes == 40
    assert gmm40.means.abs().max() <= 40


def test_bad_inputs_give_clear_errors():
    target = load_target("double_well")
    with pytest.raises(TargetInputError, match=r"expected configurations of shape \(batch, 2\), got \(5, 3\)"):
        target.energy(torch.zeros(5, 3))
    with pytest.raises(UnknownTargetError, match="unknown target 'triple_well'"):
        load_target("triple_well")
    with pytest.raises(ConfigError, match="unknown option target.options"):
        load_target("double_well", depth=3)
