"""Force matching and TICA energy targets (flowcg/cg/training.py)."""

import numpy as np
import pytest
import torch

from flowcg.cg.schnet import CGSchNet
from flowcg.cg.training import FitOptions, fit_force_matching, tica_free_energy

TYPES = [0, 1, 2, 1, 0]


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    chain = np.cumsum(np.tile([[0.15, 0.0, 0.0]], (5, 1)), axis=0)
    return chain[None] + 0.03 * rng.standard_normal((n, 5, 3))


def test_force_matching_learns_a_teacher_potential():
    torch.manual_seed(1)
    teacher = CGSchNet(TYPES, hidden=16, n_filters=16, n_rbf=8, n_interactions=1).double().eval()
    x = frames(256)
    forces = teacher.forces(torch.as_tensor(x), create_graph=False).numpy()
    student = CGSchNet(TYPES, hidden=16, n_filters=16, n_rbf=8, n_interactions=1).double()
    before = float(((student.forces(torch.as_tensor(x), create_graph=False).numpy() - forces) ** 2).mean())
    losses = fit_force_matching(student, x, forces, np.ones(len(x)), FitOptions(steps=300, batch_size=64, lr=3e-3), seed=0)
    after = float(((student.forces(torch.as_tensor(x), create_graph=False).numpy() - forces) ** 2).mean())
    assert after < 0.2 * before and np.isfinite(losses["force_mse"])


def test_zero_weight_rows_do_not_count():
    x = frames(64)
    forces = np.zeros_like(x)
    forces[32:] = 1e4  # garbage rows with weight 0 must never be drawn
    weights = np.r_[np.ones(32), np.zeros(32)]
    model = CGSchNet(TYPES, hidden=8, n_filters=8, n_rbf=8, n_interactions=1).double()
    losses = fit_force_matching(model, x, forces, weights, FitOptions(steps=5, batch_size=16), seed=0)
    assert losses["force_mse"] < 1e6


def test_bad_data_and_missing_energy_targets_are_refused():
    x = frames(8)
    model = CGSchNet(TYPES, hidden=8, n_filters=8, n_rbf=8, n_interactions=1).double()
    with pytest.raises(ValueError, match="energy targets"):
        fit_force_matching(model, x, x, np.ones(8), FitOptions(steps=1, energy_weight=0.1))
    with pytest.raises(ValueError, match="finite"):
        fit_force_matching(model, x, np.full_like(x, np.nan), np.ones(8), FitOptions(steps=1))
    with pytest.raises(ValueError, match="need positions and forces"):
        fit_force_matching(model, x, x[:, :4], np.ones(8), FitOptions(steps=1))


class FirstDistance:
    """A stand-in TICA model whose 'TICs' are the first two bead distances."""

    def transform(self, features):
        return features[:, :2]


def test_tica_free_energy_is_low_where_data_is_dense():
    x = frames(2000, seed=3)
    energy = tica_free_energy(x, np.ones(len(x)), FirstDistance(), 300.0, bins=20)
    d = np.linalg.norm(x[:, 1] - x[:, 0], axis=1)
    typical, rare = np.argmin(np.abs(d - np.median(d))), np.argmax(np.abs(d - np.median(d)))
    assert energy[typical] < energy[rare]


def test_energy_matching_runs_and_reports_its_loss():
    x = frames(128)
    model = CGSchNet(TYPES, hidden=8, n_filters=8, n_rbf=8, n_interactions=1).double()
    targets = tica_free_energy(x, np.ones(len(x)), FirstDistance(), 300.0)
    losses = fit_force_matching(model, x, np.zeros_like(x), np.ones(len(x)), FitOptions(steps=10, batch_size=32, energy_weight=0.1),
                                energy_targets_kJ_mol=targets)
    assert np.isfinite(losses["energy_var"])


def test_a_prior_alone_is_not_fitted_and_reports_its_loss():
    class Spring(torch.nn.Module):
        def forward(self, x):
            return 10.0 * x.pow(2).sum((1, 2))

    x = frames(16)
    model = CGSchNet(TYPES, n_interactions=0, prior=Spring()).double()
    losses = fit_force_matching(model, x, -20.0 * x + 1.0, np.ones(16), FitOptions(steps=5, batch_size=8), seed=0)
    assert losses["force_mse"] == pytest.approx(1.0)
