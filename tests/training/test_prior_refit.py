"""The importance-weighted prior refit: a target that is the model's own conditional under another
slow marginal is matched exactly once the prior is refit, and the refit survives save and load."""

import copy

import pytest
import torch

from flowcg.flows.build import build_flow
from flowcg.flows.model import StructuredFlow
from flowcg.sampling import draw_samples, kish_ess
from flowcg.targets.base import Target
from flowcg.training.prior_refit import PriorRefitConfig, refit_slow_prior


class _ModelAsTarget(Target):
    """p(x) = q_true(x): a frozen flow, so log w = log q_true − log q is known exactly."""

    name = "model_as_target"

    def __init__(self, flow: StructuredFlow):
        super().__init__(event_shape=(flow.latent.dim,))
        self.flow = flow

    def _reduced_energy(self, x):
        with torch.no_grad():
            return -self.flow.log_prob(x)


def _model(n_components: int, seed: int) -> StructuredFlow:
    return build_flow(dim=3, slow_dim=1, n_components=n_components, n_couplings=2, hidden=16, prior_init_spread=3.0, seed=seed).double()


@pytest.fixture(scope="module")
def refit_case():
    torch.manual_seed(0)
    model = _model(n_components=1, seed=0)
    truth = copy.deepcopy(model)  # the same conditional and bijection, a 3-mode slow marginal
    with torch.no_grad():
        truth.latent.slow.resize_(3)
        truth.latent.slow.means.copy_(torch.tensor([[-3.0], [0.5], [3.0]]))
        truth.latent.slow.log_stds.fill_(-1.0)
        truth.latent.slow.logits.copy_(torch.tensor([0.0, 1.0, -0.5]))
    target = _ModelAsTarget(truth)
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


def test_refit_model_reloads_into_a_model_built_with_the_old_size(refit_case):
    model = refit_case[0]
    fresh = _model(n_components=1, seed=0)
    parameters_before = list(fresh.parameters())
    fresh.load_state_dict(model.state_dict())
    assert fresh.latent.slow.n_components == 3
    assert all(a is b for a, b in zip(parameters_before, fresh.parameters()))  # an optimiser holding them stays valid
    x = model.sample(64).x
    torch.testing.assert_close(fresh.log_prob(x), model.log_prob(x))


def test_refit_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_components must be ≥ 0"):
        PriorRefitConfig(n_components=-1)
    with pytest.raises(ValueError, match="nothing to refit"):
        refit_slow_prior(_model(1, 0), None, PriorRefitConfig())
