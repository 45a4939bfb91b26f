"""The structured flow: exact log-densities (against autograd Jacobians) and exact inverses."""

import pytest
import torch
from torch.autograd.functional import jacobian

from flowcg.flows import build_flow


def _perturbed_flow(coupling: str, dim: int = 4, slow_dim: int = 2, n_components: int = 3, scale: float = 0.2):
    model = build_flow(dim, slow_dim, n_components, coupling=coupling, n_couplings=3, hidden=16, num_bins=6, tail_bound=3.0).double()
    with torch.no_grad():
        for p in model.parameters():  # move away from the identity initialisation
            p.add_(scale * torch.randn_like(p))
    return model


@pytest.mark.parametrize("coupling", ["spline", "affine"])
def test_logdet_matches_autograd_jacobian(coupling):
    model = _perturbed_flow(coupling)
    z = model.latent.sample(5)
    _, logdet = model.bijection(z)
    for i in range(z.shape[0]):
        jac = jacobian(lambda v: model.bijection(v[None])[0][0], z[i])
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)


@pytest.mark.parametrize("coupling", ["spline", "affine"])
def test_log_prob_is_change_of_variables(coupling):
    model = _perturbed_flow(coupling)
    draw = model.rsample(64)
    assert torch.allclose(draw.log_q, model.log_prob(draw.x), atol=1e-8)
    assert torch.allclose(draw.sample_weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_encode_inverts_sampling(dtype, tol):
    # a milder perturbation: float32 cannot invert maps that stretch the latent by 1e3
    model = _perturbed_flow("spline", scale=0.1).to(dtype)
    draw = model.sample(256)
    z_slow, z_fast = model.encode(draw.x)
    assert z_slow.shape == (256, 2) and z_fast.shape == (256, 2)
    assert (torch.cat([z_slow, z_fast], 1) - draw.z).abs().max() < tol


def test_identity_initialisation_keeps_slow_latent_on_first_coordinate():
    model = build_flow(3, 1, 2)
    draw = model.sample(100)
    assert torch.allclose(draw.x[:, 0], draw.z[:, 0], atol=1e-5)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="slow_dim"):
        build_flow(2, 3)
    with pytest.raises(ValueError, match="unknown coupling"):
        build_flow(2, 1, coupling="glow")
    with pytest.raises(ValueError, match="unknown fast density"):
        build_flow(2, 1, fast="laplace")
