"""Circular splines, the circle embedding and mixed line/circle couplings: exact densities, inverses, periodicity."""

import copy
import math

import torch
from torch.autograd.functional import jacobian

from flowcg.flows.circular import CircleEmbedding, circular_spline
from flowcg.flows.couplings import MixedSplineCoupling


def _random_spline_params(shape, bins=6, generator=None):
    def draw(*extra):
        return torch.randn(*shape, *extra, generator=generator, dtype=torch.float64)

    return draw(bins), draw(bins), draw(bins - 1), draw(), draw()


def test_circular_spline_inverts_and_has_exact_derivative():
    generator = torch.Generator().manual_seed(0)
    params = _random_spline_params((200,), generator=generator)
    tau = (torch.rand(200, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    y, logdet = circular_spline(tau, *params)
    back, logdet_inverse = circular_spline(y, *params, inverse=True)
    assert torch.allclose(back, tau, atol=1e-9)
    assert torch.allclose(logdet, -logdet_inverse, atol=1e-9)
    derivative = torch.autograd.functional.jvp(lambda t: circular_spline(t, *params)[0], tau, torch.ones_like(tau))[1]
    assert torch.allclose(derivative.log(), logdet, atol=1e-8)


def test_circular_spline_is_smooth_across_the_seam():
    params = _random_spline_params((1,), generator=torch.Generator().manual_seed(1))
    ends = torch.tensor([-math.pi, math.pi - 1e-12], dtype=torch.float64)
    y, logdet = circular_spline(ends, *(p.expand(2, *p.shape[1:]) for p in params))
    gap = torch.remainder(y[1] - y[0] + math.pi, 2 * math.pi) - math.pi
    assert abs(gap) < 1e-9  # f(−π) ≡ f(π) on the circle
    assert abs(logdet[1] - logdet[0]) < 1e-9  # equal end derivatives: C¹ on the circle


def test_circle_embedding_maps_cauchy_to_uniform():
    embedding = CircleEmbedding(torch.tensor([True, False]))
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(200_000, 2, generator=generator, dtype=torch.float64)
    z[:, 0] = torch.tan(math.pi * (torch.rand(200_000, generator=generator, dtype=torch.float64) - 0.5))  # standard Cauchy
    y, logdet = embedding(z)
    counts = torch.histc(y[:, 0], bins=8, min=-math.pi, max=math.pi)
    assert (counts / len(z) - 1 / 8).abs().max() < 0.005
    assert torch.equal(y[:, 1], z[:, 1])
    jac = jacobian(lambda v: embedding(v[None])[0][0], z[0])
    assert torch.allclose(logdet[0], torch.linalg.slogdet(jac).logabsdet, atol=1e-10)
    moderate = z[:, 0].abs() < 1e4
    assert torch.allclose(embedding.inverse(y)[0][moderate], z[moderate], rtol=1e-6, atol=1e-8)


def _perturbed_coupling(seed=3):
    torch.manual_seed(seed)
    transform_mask = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    periodic_mask = torch.tensor([0, 1, 1, 0, 0, 1], dtype=torch.bool)
    layer = MixedSplineCoupling(transform_mask, periodic_mask, hidden=16, n_blocks=1, num_bins=5, tail_bound=3.0).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(16, 6, dtype=torch.float64)
    x[:, periodic_mask] = (torch.rand(16, 3, dtype=torch.float64) * 2 - 1) * 3.0
    return layer, x


def test_mixed_coupling_logdet_and_inverse():
    layer, x = _perturbed_coupling()
    y, logdet = layer(x)
    for i in range(4):
        jac = jacobian(lambda v: layer(v[None])[0][0], x[i])
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)
    back, logdet_inverse = layer.inverse(y)
    assert torch.allclose(back, x, atol=1e-9)
    assert torch.allclose(logdet, -logdet_inverse, atol=1e-9)
    assert (y[:, layer._circle].abs() <= math.pi).all()


def test_mixed_coupling_starts_at_identity():
    layer = MixedSplineCoupling(torch.tensor([1, 0, 1, 0], dtype=torch.bool), torch.tensor([1, 1, 0, 0], dtype=torch.bool), hidden=8)
    x = torch.tensor([[0.5, -2.0, 1.5, 0.3], [-3.0, 3.1, -0.2, 7.0]])
    y, logdet = layer(x)
    assert torch.allclose(y, x, atol=1e-5) and logdet.abs().max() < 1e-5


def test_mixed_coupling_saves_its_output_rows_feature_by_feature():
    """The conditioner's output layer is saved feature by feature (the saved weights' meaning) and
    held parameter by parameter: parameter j of line feature f is saved as row f(3K − 1) + j,
    of circle feature f as row n_line + f(3K + 1) + j, and comes out at [:, j, f] of its block."""
    layer, x = _perturbed_coupling()
    k, n_line, n_circle = layer.num_bins, len(layer._line), len(layer._circle)
    features = torch.randn(16, layer.conditioner.initial_layer.in_features, dtype=torch.float64)
    saved = layer.state_dict()
    stored_net = copy.deepcopy(layer.conditioner)  # nflows' own network with the rows in saved order
    stored_net.final_layer.load_state_dict({name: saved[f"conditioner.final_layer.{name}"] for name in ("weight", "bias")})
    stored = stored_net(features)
    planes = layer.conditioner(features)
    line = planes[:, : n_line * (3 * k - 1)].view(16, 3 * k - 1, n_line)
    circle = planes[:, n_line * (3 * k - 1) :].view(16, 3 * k + 1, n_circle)
    torch.testing.assert_close(line[:, 4, 1], stored[:, 1 * (3 * k - 1) + 4])
    torch.testing.assert_close(circle[:, 3 * k, 0], stored[:, n_line * (3 * k - 1) + 3 * k])
    torch.testing.assert_close(line.permute(0, 2, 1).reshape(16, -1), stored[:, : n_line * (3 * k - 1)])
    torch.testing.assert_close(circle.permute(0, 2, 1).reshape(16, -1), stored[:, n_line * (3 * k - 1) :])
    # a fresh layer loading the saved rows is the same map
    fresh, _ = _perturbed_coupling(seed=4)
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
