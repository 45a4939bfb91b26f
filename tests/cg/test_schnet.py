import math

import pytest
import torch

from flowcg.cg.schnet import CGSchNet, GaussianRBF, cosine_cutoff

TYPES = [0, 1, 2, 0, 1]


def small_model(**kwargs):
    torch.manual_seed(1)
    return CGSchNet(TYPES, hidden=16, n_filters=16, n_rbf=12, cutoff=1.0, n_interactions=2, **kwargs).double()


def frames(batch=3):
    """Chain-like CG frames (B, 5, 3) in nm with bead spacing ~0.15 nm."""
    g = torch.Generator().manual_seed(3)
    steps = 0.15 * torch.nn.functional.normalize(torch.randn(batch, 5, 3, generator=g, dtype=torch.float64), dim=-1)
    return steps.cumsum(1)


class Spring(torch.nn.Module):
    """A harmonic prior U = 10 |X|² kJ/mol."""

    def forward(self, x):
        return 10.0 * x.pow(2).sum((1, 2))


def random_rotation(seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def test_shapes():
    model, x = small_model().eval(), frames(4)
    energy, forces = model.energy_and_forces(x)
    assert energy.shape == (4,) and forces.shape == (4, 5, 3)
    assert energy.dtype == forces.dtype == torch.float64 and not forces.requires_grad
    with pytest.raises(ValueError, match=r"\(B, 5, 3\)"):
        model(torch.zeros(2, 4, 3, dtype=torch.float64))


def test_forces_are_minus_the_energy_gradient():
    model, x = small_model(), frames(2)
    forces = model.forces(x, create_graph=False)
    eps = 1e-6
    for b, i, d in [(0, 0, 0), (0, 2, 1), (1, 4, 2), (1, 1, 0)]:
        plus, minus = x.clone(), x.clone()
        plus[b, i, d] += eps
        minus[b, i, d] -= eps
        numerical = -(model(plus)[b] - model(minus)[b]) / (2 * eps)
        assert forces[b, i, d].item() == pytest.approx(numerical.item(), rel=1e-6, abs=1e-8)
    # Each replica's force depends on that replica only (batched independently).
    assert torch.allclose(model.forces(x[1:]), forces[1:], atol=1e-12)


def test_rotation_translation_reflection_invariance():
    model, x = small_model(), frames(3)
    rotation = random_rotation(5)
    moved = x @ rotation.T + torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model(moved), model(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(-x), model(x), rtol=1e-10, atol=1e-10)
    # Forces rotate with the frame.
    torch.testing.assert_close(model.forces(moved), model.forces(x) @ rotation.T, rtol=1e-8, atol=1e-10)


def test_permutation_of_beads_with_their_types():
    model, x = small_model(), frames(3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    types = torch.tensor(TYPES)
    torch.testing.assert_close(model(x[:, perm], bead_types=types[perm]), model(x), rtol=1e-10, atol=1e-10)
    # Beads 0 and 3 share a type: swapping them leaves the energy unchanged; swapping two
    # beads of different types (0 and 2) does not.
    swap_same, swap_different = torch.tensor([3, 1, 2, 0, 4]), torch.tensor([2, 1, 0, 3, 4])
    torch.testing.assert_close(model(x[:, swap_same]), model(x), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(model(x[:, swap_different]), model(x))


def test_no_interaction_beyond_the_cutoff():
    model = small_model()
    far = torch.arange(5, dtype=torch.float64)[None, :, None] * torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)
    jiggled = far + 0.1 * torch.randn(far.shape, dtype=torch.float64)
    torch.testing.assert_close(model(jiggled), model(far))
    assert model.forces(far).abs().max() == 0


def test_prior_is_added():
    model, x = small_model(prior=Spring()), frames(2)
    torch.testing.assert_close(model(x), model.network_energy(x) + 10.0 * x.pow(2).sum((1, 2)))


def test_create_graph_allows_force_matching():
    model, x = small_model(), frames(2)
    model.train()
    forces = model.forces(x)
    assert forces.requires_grad
    loss = forces.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.interactions[0].filter_net.parameters())
    model.eval()
    with torch.no_grad():
        assert not model.forces(x).requires_grad


def test_radial_basis_and_envelope():
    rbf = GaussianRBF(11, 1.0)
    values = rbf(torch.tensor([0.3]))
    assert values.shape == (1, 11) and values[0, 3] == pytest.approx(1.0)
    d = torch.tensor([0.0, 0.5, 1.0, 1.5])
    torch.testing.assert_close(cosine_cutoff(d, 1.0), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert math.isclose(float(cosine_cutoff(torch.tensor(0.999999), 1.0)), 0.0, abs_tol=1e-10)


def test_no_interactions_is_the_prior_alone():
    model, x = CGSchNet(TYPES, n_interactions=0, prior=Spring()).double(), frames(2)
    torch.testing.assert_close(model(x), 10.0 * x.pow(2).sum((1, 2)))
    torch.testing.assert_close(model.forces(x, create_graph=False), -20.0 * x)
    assert not model.has_network and model.trainable_parameters() == []
    with pytest.raises(ValueError, match="0 with a prior"):
        CGSchNet(TYPES, n_interactions=0)
