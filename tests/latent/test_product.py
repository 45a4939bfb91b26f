"""The block-product slow prior: a normalised density equal to the product of its blocks, stratified
draws that estimate expectations without bias (every block's π gets a gradient), an EM fit that is
the product of the marginal fits, and one block = the joint mixture."""

import math

import torch

from flowcg.latent import BlockMixture, DiagonalGaussianMixture


def _prior(n_components=3) -> BlockMixture:
    prior = BlockMixture([[0, 2], [1, 3]], n_components=n_components, init_spread=math.pi, init_std=0.4, seed=3, periodic=True).double()
    with torch.no_grad():
        for b, block in enumerate(prior.blocks):
            block.logits.copy_(torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64) * (b + 1))
    return prior


def test_log_prob_is_the_sum_of_the_blocks_and_normalised():
    prior = _prior()
    torch.manual_seed(0)
    z = (torch.rand(200_000, 4, dtype=torch.float64) * 2 - 1) * math.pi
    expected = prior.blocks[0].log_prob(z[:, [0, 2]]) + prior.blocks[1].log_prob(z[:, [1, 3]])
    assert torch.allclose(prior.log_prob(z), expected)
    mass = float(prior.log_prob(z).exp().mean().detach()) * (2 * math.pi) ** 4  # uniform Monte Carlo over the 4-torus
    assert abs(mass - 1.0) < 0.03


def test_stratified_draws_are_unbiased_and_reach_every_blocks_weights():
    prior = _prior()
    torch.manual_seed(1)
    exact = prior.sample(400_000)
    observable = lambda z: torch.cos(z[:, 0]) + torch.sin(z[:, 1] + z[:, 2])  # couples the blocks
    estimates = []
    for _ in range(40):
        z, weights = prior.rsample_stratified(2_000)
        assert torch.allclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
        estimates.append(float((weights * observable(z)).sum().detach()))
    assert abs(sum(estimates) / len(estimates) - float(observable(exact).mean())) < 0.01
    z, weights = prior.rsample_stratified(600)
    (weights * observable(z)).sum().backward()
    assert all(block.logits.grad.abs().sum() > 0 for block in prior.blocks)


def test_fit_is_the_product_of_the_block_fits_and_resize_reaches_every_block():
    truth = _prior()
    torch.manual_seed(2)
    z, weights = truth.sample(20_000), torch.rand(20_000, dtype=torch.float64)
    fitted = BlockMixture([[0, 2], [1, 3]], n_components=1, periodic=True).double().resize_(3)
    info = fitted.fit_weighted(z, weights, n_iter=50, seed=5)
    assert fitted.n_components == 3 and info["blocks"] == 2
    for b, columns in enumerate(([0, 2], [1, 3])):
        alone = DiagonalGaussianMixture(2, 3, periodic=True).double()
        alone.fit_weighted(z[:, columns], weights, n_iter=50, seed=5 + b)
        assert torch.allclose(fitted.blocks[b].means, alone.means) and torch.allclose(fitted.blocks[b].log_stds, alone.log_stds)


def test_one_block_draws_like_the_joint_mixture():
    torch.manual_seed(4)
    single = BlockMixture([[0, 1]], n_components=4, init_spread=2.0, seed=7, periodic=True)
    joint = DiagonalGaussianMixture(2, 4, init_spread=2.0, seed=7, periodic=True)
    torch.manual_seed(5)
    z_single, w_single = single.rsample_stratified(101)
    torch.manual_seed(5)
    z_joint, w_joint = joint.rsample_stratified(101)
    assert torch.allclose(z_single, z_joint) and torch.allclose(w_single, w_joint)
    assert torch.allclose(single.log_prob(z_joint), joint.log_prob(z_joint))


def test_docstring_example():
    import doctest

    import flowcg.latent.product

    assert doctest.testmod(flowcg.latent.product).failed == 0
