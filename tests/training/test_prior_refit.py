"""The importance-weighted prior refit: a target that is the model's own conditional under another
slow marginal is matched exactly once the prior is refit, and the refit survives save and load."""

import copy

import pytest
import torch

from flowcg.flows.model import StructuredFlow
from flowcg.sampling import draw_samples, kish_ess
from flowcg.training.prior_refit import PriorRefitConfig, refit_slow_prior


def _three_mode_truth(model: StructuredFlow) -> StructuredFlow:
    """The model's conditional and bijection under a 3-mode slow marginal."""
    truth = copy.deepcopy(model)
    with torch.no_grad():
        truth.latent.slow.resize_(3)
        truth.latent.slow.means.copy_(torch.tensor([[-3.0], [0.5], [3.0]]))
        truth.latent.slow.log_stds.fill_(-1.0)
        truth.latent.slow.logits.copy_(torch.tensor([0.0, 1.0, -0.5]))
    return truth


@pytest.fixture(scope="module")
def refit_case(small_flow, model_as_target):
    torch.manual_seed(0)
    model = small_flow(n_components=1, seed=0)
    truth = _three_mode_truth(model)
    target = model_as_target(truth)
    ess_before = kish_ess(draw_samples(model, target, 20_000).log_w)
    records = refit_slow_prior(model, target, PriorRefitConfig(n_components=3, n_samples=20_000, rounds=2), seed=0)
    return model, truth, target, ess_before, records


def test_refit_recovers_the_target_slow_marginal(refit_case):
    model, truth, target, ess_before, records = refit_case
    ess_after = kish_ess(draw_samples(model, target, 20_000).log_w)
    assert ess_before < 0.5 and ess_after > 0.97, (ess_before, ess_after)
    assert [r["round"] for r in records] == [0, 1] and records[1]["ess_of_draws"] > records[0]["ess_of_draws"]
    order = torch.argsort(model.latent.slow.means[:, 0])
    torch.testing.assert_close(model.latent.slow.means[order], truth.latent.slow.means, atol=0.05, rtol=0)
    torch.testing.assert_close(model.latent.slow.weights[order], truth.latent.slow.weights, atol=0.03, rtol=0)
    # every draw counts: 2 rounds plus the two ESS evaluations
    assert target.n_energy_evaluations == 4 * 20_000


def test_refit_model_reloads_into_a_model_built_with_the_old_size(refit_case, small_flow):
    model = refit_case[0]
    fresh = small_flow(n_components=1, seed=0)
    parameters_before = list(fresh.parameters())
    fresh.match_slow_prior(model.state_dict()).load_state_dict(model.state_dict())
    assert fresh.latent.slow.n_components == 3
    assert all(a is b for a, b in zip(parameters_before, fresh.parameters()))  # an optimiser holding them stays valid
    x = model.sample(64).x
    torch.testing.assert_close(fresh.log_prob(x), model.log_prob(x))


def test_refit_config_rejects_bad_values(small_flow):
    with pytest.raises(ValueError, match="n_components must be ≥ 0"):
        PriorRefitConfig(n_components=-1)
    with pytest.raises(ValueError, match="nothing to refit"):
        refit_slow_prior(small_flow(1, 0), None, PriorRefitConfig())


def _torus_model(n_components: int, seed: int) -> StructuredFlow:
    """An angle s with a wrapped-normal mixture prior and x_fast | s from a small conditional Gaussian."""
    from nflows.transforms import IdentityTransform

    from flowcg.latent.conditional import ConditionalDiagonalGaussian
    from flowcg.latent.mixture import DiagonalGaussianMixture
    from flowcg.latent.structured import StructuredLatent

    torch.manual_seed(seed)
    slow = DiagonalGaussianMixture(1, n_components, init_spread=0.5, init_std=0.4, seed=seed, periodic=True)
    latent = StructuredLatent(slow, ConditionalDiagonalGaussian(1, 2, hidden=8, periodic_slow=True))
    return StructuredFlow(latent, IdentityTransform()).double()


@pytest.mark.parametrize("per_state_draws", [1, 8])
def test_defensive_refit_finds_a_basin_the_model_never_visits(model_as_target, per_state_draws):
    """The target puts 2 % of its mass at s = 2.5 rad, where the model's prior has ~no mass: draws from
    π alone cannot see it, the uniform share of the defensive proposal does (draw by draw, or state by state)."""
    model = _torus_model(1, seed=1)
    truth = copy.deepcopy(model)
    with torch.no_grad():
        model.latent.slow.means.fill_(-1.0)
        model.latent.slow.log_stds.fill_(-1.5)
        truth.latent.slow.resize_(2)
        truth.latent.slow.means.copy_(torch.tensor([[-1.0], [2.5]]))
        truth.latent.slow.log_stds.fill_(-1.5)
        truth.latent.slow.logits.copy_(torch.log(torch.tensor([0.98, 0.02])))
    target = model_as_target(truth)
    plain, defensive = copy.deepcopy(model), model
    refit_slow_prior(plain, target, PriorRefitConfig(n_components=2, n_samples=20_000, per_state_draws=per_state_draws), seed=0)
    records = refit_slow_prior(defensive, target, PriorRefitConfig(n_components=2, n_samples=20_000, uniform_fraction=0.3,
                                                                   per_state_draws=per_state_draws), seed=0)
    assert records[0]["uniform_fraction"] == 0.3

    def rare_mass(flow):
        s = flow.sample(50_000).z[:, 0]
        return float(((s > 1.5) & (s < 3.1)).double().mean())

    assert rare_mass(plain) < 0.002
    assert rare_mass(defensive) == pytest.approx(0.02, abs=0.004)


def test_conditional_share_of_the_objective_trains_no_slow_prior_parameter(small_flow, model_as_target):
    from flowcg.training.objective import reverse_kl

    model = _torus_model(2, seed=0)
    target = model_as_target(_torus_model(2, seed=3))
    torch.manual_seed(0)
    estimate = reverse_kl(model, target, beta=1.0, batch_size=64, slow_uniform_fraction=0.5)
    assert torch.isfinite(estimate.loss) and estimate.energies_kT.shape == (32,)
    assert target.n_energy_evaluations == 64  # the prior and the conditional draws in one energy call
    # the conditional share alone: no gradient reaches the prior, while the conditional Gaussian learns
    model.zero_grad()
    s = model.latent.uniform_slow(16)
    draw = model.rsample_given_slow(s)
    (draw.log_q - model.latent.slow.log_prob(s) + target.energy(draw.x)).mean().backward()
    slow_grads = [p.grad for p in model.latent.slow.parameters()]
    assert all(g is None or float(g.abs().max()) < 1e-12 for g in slow_grads)
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.latent.fast.parameters())
    with pytest.raises(ValueError, match="periodic slow latents"):
        reverse_kl(small_flow(1, 0), target, beta=1.0, batch_size=8, slow_uniform_fraction=0.5)


def test_tempered_refit_steps_toward_the_target_when_the_weights_are_too_spread(small_flow, model_as_target):
    """min_ess above the draws' ESS: each round fits w^α with α < 1 (a partial step), the rounds' ESS
    rises, and once the full weights keep min_ess (α = 1) the refit is the plain one."""
    torch.manual_seed(0)  # the refit's draws: the same whatever ran before
    model = small_flow(n_components=1, seed=0)
    target = model_as_target(_three_mode_truth(model))
    records = refit_slow_prior(model, target, PriorRefitConfig(n_components=3, n_samples=20_000, rounds=4, min_ess=0.6), seed=0)
    exponents = [r["weight_exponent"] for r in records]
    assert exponents[0] < 1.0 and exponents[-1] == 1.0, exponents
    assert all(later > earlier for earlier, later in zip(exponents, exponents[1:]) if earlier < 1.0), exponents
    assert records[0]["ess_of_draws"] < 0.6 < records[-1]["ess_of_draws"]
    assert kish_ess(draw_samples(model, target, 20_000).log_w) > 0.95
    with pytest.raises(ValueError, match="min_ess must be in"):
        PriorRefitConfig(n_components=3, min_ess=1.5)


def test_state_weights_average_the_conditional_and_recover_the_slow_marginal(small_flow, model_as_target):
    """The target's conditional is narrower than the model's (a finite weight variance), so one draw per
    state carries a noisy weight; M = 16 draws per state average it (W(s) ∝ p(s)/π(s)): the states' weights are far less
    spread than single draws', and the refit lands on the target's slow marginal at the full step."""
    torch.manual_seed(0)
    model = small_flow(n_components=1, seed=0)
    truth = _three_mode_truth(model)
    with torch.no_grad():
        truth.latent.fast.log_std_offset.add_(-0.7)
    target = model_as_target(truth)
    single = draw_samples(model, target, 20_000).log_w
    evaluations = target.n_energy_evaluations
    config = PriorRefitConfig(n_components=3, n_samples=32_000, per_state_draws=16, rounds=2)
    records = refit_slow_prior(model, target, config, seed=0)
    assert target.n_energy_evaluations - evaluations == 2 * 32_000  # n_samples counts draws, not states
    assert records[0]["per_state_draws"] == 16 and records[0]["ess_of_draws"] > 2 * kish_ess(single)
    order = torch.argsort(model.latent.slow.means[:, 0])
    torch.testing.assert_close(model.latent.slow.means[order], truth.latent.slow.means, atol=0.08, rtol=0)
    torch.testing.assert_close(model.latent.slow.weights[order], truth.latent.slow.weights, atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="per_state_draws must be ≥ 1"):
        PriorRefitConfig(n_components=3, per_state_draws=0)
    with pytest.raises(ValueError, match="at least per_state_draws"):
        PriorRefitConfig(n_components=3, n_samples=8, per_state_draws=16)


def _two_block_model(seed: int) -> StructuredFlow:
    """Two slow latents with a product prior (one mixture per latent), a conditional Gaussian fast latent."""
    from nflows.transforms import IdentityTransform

    from flowcg.latent.conditional import ConditionalDiagonalGaussian
    from flowcg.latent.product import BlockMixture
    from flowcg.latent.structured import StructuredLatent

    torch.manual_seed(seed)
    slow = BlockMixture([[0], [1]], n_components=2, init_spread=2.0, init_std=1.5, seed=seed)
    return StructuredFlow(StructuredLatent(slow, ConditionalDiagonalGaussian(2, 1, hidden=8)), IdentityTransform()).double()


def test_joint_refit_holds_the_correlation_a_product_of_blocks_cannot(model_as_target):
    """The target's slow marginal puts its mass at (−2, −2) and (2, 2): the best product of the two
    marginals also puts half of it at (−2, 2) and (2, −2) (Kish ESS ≈ 0.5), one joint mixture holds it
    (ESS ≈ 1). The joined model reloads into a model built with the product (match_slow_prior)."""
    from flowcg.latent.mixture import DiagonalGaussianMixture

    truth = _two_block_model(seed=0)
    truth.latent.slow = DiagonalGaussianMixture(2, 2, periodic=False).double()
    with torch.no_grad():
        truth.latent.slow.means.copy_(torch.tensor([[-2.0, -2.0], [2.0, 2.0]]))
        truth.latent.slow.log_stds.fill_(-0.7)
    target = model_as_target(truth)
    product, joined = _two_block_model(seed=0), _two_block_model(seed=0)
    joined.latent.fast.load_state_dict(truth.latent.fast.state_dict())
    product.latent.fast.load_state_dict(truth.latent.fast.state_dict())
    refit_slow_prior(product, target, PriorRefitConfig(n_components=2, n_samples=20_000, rounds=2), seed=0)
    refit_slow_prior(joined, target, PriorRefitConfig(n_components=2, n_samples=20_000, rounds=2, slow_blocks="joint"), seed=0)
    torch.manual_seed(1)
    assert kish_ess(draw_samples(product, target, 20_000).log_w) < 0.6
    assert kish_ess(draw_samples(joined, target, 20_000).log_w) > 0.97
    assert isinstance(joined.latent.slow, DiagonalGaussianMixture)
    fresh = _two_block_model(seed=5)
    fresh.match_slow_prior(joined.state_dict()).load_state_dict(joined.state_dict())
    x = joined.sample(64).x
    torch.testing.assert_close(fresh.log_prob(x), joined.log_prob(x))
    with pytest.raises(ValueError, match="slow_blocks must be null"):
        PriorRefitConfig(n_components=2, slow_blocks="bonded")


def test_draws_at_given_slow_states_follow_the_states_across_batches(small_flow, model_as_target):
    """draw_samples(slow=tensor): row i of the tensor is draw i's slow state, whatever the batching."""
    model = small_flow(n_components=1, seed=0)
    target = model_as_target(_three_mode_truth(model))
    states = torch.linspace(-3.0, 3.0, 10, dtype=torch.float64)[:, None]
    draws = draw_samples(model, target, 10, batch_size=4, slow=states)
    torch.testing.assert_close(torch.as_tensor(draws.z_slow), states)
    with pytest.raises(ValueError, match="one slow state per draw"):
        draw_samples(model, target, 12, batch_size=4, slow=states)
