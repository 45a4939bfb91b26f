"""Shared pieces of the training tests: a small flow, a target that is a frozen flow's density, and a
double well that can be killed mid-run."""

import pytest
import torch

from flowcg.flows.build import build_flow
from flowcg.flows.model import StructuredFlow
from flowcg.targets.base import Target
from flowcg.targets.synthetic import DoubleWell


class ModelAsTarget(Target):
    """p(x) = q_true(x), a frozen flow, so log w = log q_true − log q is known exactly; the first
    ``nan_rows`` rows of every batch get a NaN energy."""

    name = "model_as_target"

    def __init__(self, flow: StructuredFlow, nan_rows: int = 0):
        super().__init__(event_shape=(flow.latent.dim,))
        self.flow, self.nan_rows = flow, nan_rows

    def _reduced_energy(self, x):
        with torch.no_grad():
            u = -self.flow.log_prob(x)
        u[: self.nan_rows] = torch.nan
        return u


def _small_flow(n_components: int, seed: int) -> StructuredFlow:
    """A 3-d flow with one slow latent and ``n_components`` mixture components, float64."""
    return build_flow(dim=3, slow_dim=1, n_components=n_components, n_couplings=2, hidden=16, prior_init_spread=3.0, seed=seed).double()


@pytest.fixture(scope="session")
def model_as_target():
    return ModelAsTarget


@pytest.fixture(scope="session")
def small_flow():
    return _small_flow


class Killed(RuntimeError):
    pass


class KillableDoubleWell(DoubleWell):
    """Raises :class:`Killed` after ``kill_after_calls`` energy calls, like a kill mid-run."""

    def __init__(self, kill_after_calls=None):
        super().__init__()
        self.calls, self.kill_after_calls = 0, kill_after_calls

    def _reduced_energy(self, x):
        self.calls += 1
        if self.kill_after_calls is not None and self.calls > self.kill_after_calls:
            raise Killed
        return super()._reduced_energy(x)
