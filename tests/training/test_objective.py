"""The importance-weighted forward KL: its weights, its robustness to non-finite energies, and that
its minimiser over the slow mixture is the target's slow marginal."""

import copy

import pytest
import torch

from flowcg.errors import ConfigError
from flowcg.training import TrainConfig
from flowcg.training.objective import kl_objective, reweighted_forward_kl


def test_on_its_own_density_the_weights_are_uniform(small_flow, model_as_target):
    model = small_flow(2, 0)
    target = model_as_target(copy.deepcopy(model))
    torch.manual_seed(1)
    estimate = reweighted_forward_kl(model, target, beta=1.0, batch_size=256)
    torch.manual_seed(1)
    x = model.sample(256).x
    assert float(estimate.loss.detach()) == pytest.approx(float(-model.log_prob(x).mean().detach()), rel=1e-9)
    assert target.n_energy_evaluations == 256


def test_nonfinite_energies_get_no_weight_and_keep_the_batch_shape(small_flow, model_as_target):
    model = small_flow(2, 0)
    target = model_as_target(copy.deepcopy(model), nan_rows=5)
    torch.manual_seed(2)
    estimate = reweighted_forward_kl(model, target, beta=1.0, batch_size=64)
    torch.manual_seed(2)
    x = model.sample(64).x
    assert estimate.n_nonfinite == 5 and estimate.log_q.shape == (64,)
    assert float(estimate.loss.detach()) == pytest.approx(float(-model.log_prob(x[5:]).mean().detach()), rel=1e-9)
    estimate.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_forward_kl_fits_the_slow_mixture_weights_of_the_target(small_flow, model_as_target):
    """Same bijection and conditional, other slow weights: the forward KL's minimiser over the
    mixture weights is the target's (the exact, in-family optimum; mass moves where q was light)."""
    torch.manual_seed(0)
    model = small_flow(2, 0)
    truth = copy.deepcopy(model)
    with torch.no_grad():
        truth.latent.slow.logits.copy_(torch.tensor([1.5, -1.5]))
        model.latent.slow.logits.zero_()
    target = model_as_target(truth)
    optimizer = torch.optim.Adam([model.latent.slow.logits], lr=0.1)
    for _ in range(120):
        optimizer.zero_grad()
        kl_objective(model, target, beta=1.0, batch_size=256, forward_kl_weight=1.0).loss.backward()
        optimizer.step()
    learned = torch.softmax(model.latent.slow.logits.detach(), 0)
    assert learned.tolist() == pytest.approx(torch.softmax(truth.latent.slow.logits, 0).tolist(), abs=0.03)


def test_mixed_objective_draws_both_batches(small_flow, model_as_target):
    model = small_flow(2, 0)
    target = model_as_target(copy.deepcopy(model))
    estimate = kl_objective(model, target, beta=1.0, batch_size=32, forward_kl_weight=0.5)
    assert torch.isfinite(estimate.loss) and target.n_energy_evaluations == 64


@pytest.mark.parametrize("options, message", [
    (dict(forward_kl_weight=1.5), "forward_kl_weight must be in"),
    (dict(forward_kl_weight=1.0, slow_uniform_fraction=0.5), "leaves out"),
])
def test_bad_forward_kl_settings_fail_clearly(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)
