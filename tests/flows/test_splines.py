"""The mask-free rational-quadratic spline: nflows' values, exact gradients, exact inverse."""

import math

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import rational_quadratic_spline, unconstrained_rational_quadratic_spline

from flowcg.flows.splines import pad_unit_end_derivatives, rational_quadratic

K = 6


def _parameters(n: int, features: int, circle: bool):
    g = torch.Generator().manual_seed(1)
    shape = (n, features)
    widths, heights = torch.randn(*shape, K, generator=g, dtype=torch.float64), torch.randn(*shape, K, generator=g, dtype=torch.float64)
    derivatives = torch.randn(*shape, K + 1 if circle else K - 1, generator=g, dtype=torch.float64)
    inputs = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * math.pi if circle else 4 * torch.randn(*shape, generator=g, dtype=torch.float64)
    return inputs, widths, heights, derivatives


def _nflows(inputs, widths, heights, derivatives, circle: bool, inverse: bool):
    if circle:
        return rational_quadratic_spline(inputs, widths, heights, derivatives, inverse=inverse, left=-math.pi, right=math.pi, bottom=-math.pi, top=math.pi)
    return unconstrained_rational_quadratic_spline(inputs, widths, heights, derivatives, inverse=inverse, tails="linear", tail_bound=3.0)


def _ours(inputs, widths, heights, derivatives, circle: bool, inverse: bool):
    if circle:
        return rational_quadratic(inputs, widths, heights, derivatives, torch.tensor(math.pi, dtype=inputs.dtype), torch.tensor(False), inverse)
    return rational_quadratic(inputs, widths, heights, pad_unit_end_derivatives(derivatives), torch.tensor(3.0, dtype=inputs.dtype), None, inverse)


@pytest.mark.parametrize("circle", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_values_and_gradients_match_nflows(circle, inverse):
    """Same outputs and log-derivatives as nflows' spline, tails included, and the hand-written
    backward gives autograd's gradients through nflows with respect to inputs and every parameter."""
    args = [a.requires_grad_() for a in _parameters(400, 3, circle)]
    weights = torch.randn(2, 400, 3, dtype=torch.float64)
    gradients = []
    for spline in (_nflows, _ours):
        y, logdet = spline(*args, circle=circle, inverse=inverse)
        gradients.append((y, logdet, torch.autograd.grad((weights[0] * y + weights[1] * logdet).sum(), args)))
    (y0, l0, g0), (y1, l1, g1) = gradients
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    for ours, reference in zip(g1, g0):
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-10)


def test_gradcheck_of_the_parameters():
    """Finite differences agree with the hand-written backward (float64)."""
    inputs, *params = _parameters(5, 2, circle=False)
    params = [p.requires_grad_() for p in params]
    assert torch.autograd.gradcheck(lambda *p: _ours(inputs, *p, circle=False, inverse=False), params)


@pytest.mark.parametrize("circle", [False, True])
def test_inverse_inverts_with_opposite_log_derivative(circle):
    inputs, *params = _parameters(1000, 4, circle)
    y, logdet = _ours(inputs, *params, circle=circle, inverse=False)
    back, logdet_inverse = _ours(y, *params, circle=circle, inverse=True)
    torch.testing.assert_close(back, inputs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logdet_inverse, -logdet, rtol=1e-8, atol=1e-8)
