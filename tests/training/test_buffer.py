"""The reweighted buffer: its weights, its resampling, the clipping of the top weights, and a
trainer that anneals on it and resumes exactly."""

import copy
import doctest
import math

import pytest
import torch

from flowcg.errors import ConfigError, InputError
from flowcg.flows import build_flow
from flowcg.training import TrainConfig, Trainer, build_schedule
import flowcg.training.buffer
from flowcg.training.buffer import CLIP_FRACTION, ReweightedBuffer
from flowcg.training.objective import kl_objective
from tests.training.conftest import Killed, KillableDoubleWell


def test_doctests():
    assert doctest.testmod(flowcg.training.buffer).failed == 0


def test_the_weights_are_those_of_the_drawing_flow(small_flow, model_as_target):
    model = small_flow(2, 0)
    truth = small_flow(2, 1)
    target = model_as_target(truth)
    torch.manual_seed(3)
    buffer = ReweightedBuffer.draw(model, target, beta=0.7, size=1000, chunk=256, step=4)
    torch.manual_seed(3)
    x = torch.cat([model.sample(n).x for n in (256, 256, 256, 232)])
    assert torch.equal(buffer.x, x) and buffer.step == 4 and target.n_energy_evaluations == 1000
    expected = 0.7 * truth.log_prob(x) - model.log_prob(x)
    assert torch.allclose(buffer.log_w, expected.detach(), atol=1e-9)


def test_resampling_follows_the_weights():
    log_w = torch.log(torch.tensor([1.0, 3.0, 0.0, 6.0]))
    buffer = ReweightedBuffer(torch.arange(4.0).view(4, 1), log_w, beta=1.0, step=0)
    torch.manual_seed(0)
    picked = buffer.minibatch(200_000).view(-1).long()
    share = torch.bincount(picked, minlength=4) / len(picked)
    assert share.tolist() == pytest.approx([0.1, 0.3, 0.0, 0.6], abs=0.005)


def test_the_top_weights_are_clipped_and_nonfinite_ones_dropped():
    n = 20_000
    log_w = torch.zeros(n, dtype=torch.float64)
    log_w[0] = 50.0  # one draw that would otherwise fill every minibatch
    log_w[1] = math.nan
    buffer = ReweightedBuffer(torch.arange(float(n)).view(n, 1), log_w, beta=1.0, step=0)
    assert math.ceil(CLIP_FRACTION * n) == 2
    torch.manual_seed(0)
    picked = buffer.minibatch(100_000).view(-1).long()
    assert not (picked == 1).any()
    assert (picked == 0).float().mean() == pytest.approx(1 / (n - 1), abs=1e-4)  # clipped to the 2nd largest, 1


def test_a_buffer_with_nothing_finite_is_a_clear_error():
    with pytest.raises(InputError, match="no draw of the buffer"):
        ReweightedBuffer(torch.zeros(3, 1), torch.full((3,), math.nan), beta=0.5, step=0)


def test_buffered_forward_kl_is_the_mean_log_q_of_the_resampled_batch(small_flow, model_as_target):
    model = small_flow(2, 0)
    target = model_as_target(copy.deepcopy(model))
    buffer = ReweightedBuffer.draw(model, target, beta=1.0, size=512, chunk=512, step=0)
    evaluations = target.n_energy_evaluations
    torch.manual_seed(5)
    estimate = kl_objective(model, target, beta=1.0, batch_size=64, forward_kl_weight=1.0, buffer=buffer)
    torch.manual_seed(5)
    x = buffer.minibatch(64)
    assert float(estimate.loss.detach()) == pytest.approx(float(-model.log_prob(x).mean().detach()), rel=1e-12)
    assert target.n_energy_evaluations == evaluations  # no energy evaluation per step
    with pytest.raises(ValueError, match="weights target beta"):
        kl_objective(model, target, beta=0.5, batch_size=64, forward_kl_weight=1.0, buffer=buffer)


def test_save_and_load_round_trip(tmp_path):
    buffer = ReweightedBuffer(torch.randn(10, 3), torch.randn(10), beta=0.25, step=2)
    buffer.save(tmp_path / "buffer.pt")
    loaded = ReweightedBuffer.load(tmp_path / "buffer.pt", "cpu")
    assert torch.equal(loaded.x, buffer.x) and torch.equal(loaded.log_w, buffer.log_w)
    assert (loaded.beta, loaded.step) == (0.25, 2)


@pytest.mark.parametrize("options, message", [
    (dict(buffer_size=-1, forward_kl_weight=1.0), "buffer_size must be"),
    (dict(buffer_size=1024), "forward_kl_weight > 0"),
    (dict(buffer_size=100, batch_size=256, forward_kl_weight=1.0), "at least one batch"),
    (dict(buffer_size=1024, forward_kl_weight=1.0, buffer_refresh_steps=-1), "buffer_refresh_steps must be"),
])
def test_bad_buffer_settings_fail_clearly(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


ANNEAL = dict(batch_size=64, steps_per_stage=6, final_steps=10, eval_batch_size=128, checkpoint_every=5, show_progress=False,
              forward_kl_weight=1.0, buffer_size=256)


def _annealer(target, run_dir, refresh):
    torch.manual_seed(0)
    model = build_flow(2, 1, 2, n_couplings=2, hidden=16, prior_init_spread=2.0)
    config = TrainConfig(**ANNEAL, buffer_refresh_steps=refresh)
    return Trainer(model, target, build_schedule("geometric", beta0=0.5, n_stages=3), config, run_dir)


@pytest.mark.parametrize("refresh, buffers, kill_after_calls", [
    (0, 3, 5),   # one buffer per stage (6, 6, 10 steps); killed in stage 1 after its buffer (2 chunks) and steps
    (4, 7, 4),   # drawn anew every 4 steps of a stage: 2 + 2 + 3 buffers; killed at stage 0's evaluation, resumed at step 5 inside the block drawn at step 4
])
def test_annealing_on_buffers_resumes_exactly_and_counts_only_buffer_and_evaluation_draws(tmp_path, refresh, buffers, kill_after_calls):
    reference = _annealer(KillableDoubleWell(), tmp_path / "a", refresh)
    state = reference.fit()
    # the steps themselves cost no energy evaluation: only the buffers and each stage's evaluation batch
    assert reference.target.n_energy_evaluations == buffers * 256 + 3 * 128
    assert all(0 < record["buffer_ess"] <= 1 for record in state["stages"])
    assert not (tmp_path / "a" / "buffer.pt").exists()

    killed = _annealer(KillableDoubleWell(kill_after_calls=kill_after_calls), tmp_path / "b", refresh)
    with pytest.raises(Killed):
        killed.fit()
    resumed = _annealer(KillableDoubleWell(), tmp_path / "b", refresh)
    state = resumed.fit(resume=True)
    assert state["done"] and resumed.target.n_energy_evaluations == reference.target.n_energy_evaluations
    for p, q in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
