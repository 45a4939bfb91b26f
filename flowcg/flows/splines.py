"""Monotone rational-quadratic splines without data-dependent shapes.

The maths is that of Durkan et al. 2019 ("Neural spline flows"), as nflows implements it
(``nflows.transforms.splines.rational_quadratic``): K bins on [−B, B] → [−B, B], bin widths and
heights from a softmax floored at ``MIN_BIN_SIZE``, knot derivatives from a softplus floored at
``MIN_DERIVATIVE``, and in bin k with ξ = (x − x_k) / w_k, s_k = h_k / w_k,

    y = y_k + h_k (s_k ξ² + d_k ξ(1 − ξ)) / (s_k + (d_k + d_{k+1} − 2 s_k) ξ(1 − ξ)),

the inverse by the stable root of the quadratic in ξ. Only the evaluation differs from nflows:
nflows selects the inside-the-interval entries with boolean masks (``x[mask]`` and
``out[mask] = …``, a gather, a scatter and a host synchronisation per call), checks the domain
with a host-side ``min``/``max`` and asserts on the discriminant. Here every entry is evaluated at
its clamped input and the tails are chosen with ``torch.where``: the same values to float
round-off, fixed shapes throughout (so ``torch.compile`` can fuse a whole coupling layer into a
few loops), and one code path for line features (linear tails outside [−B, B]) and circle
features (B = π, no tails; Rezende et al. 2020).

>>> x = torch.linspace(-4.0, 4.0, 9)
>>> bins = torch.zeros(9, 4)                      # equal bins ...
>>> slopes = torch.full((9, 3), UNIT_DERIVATIVE)  # ... and unit knot derivatives: the identity
>>> y, logdet = rational_quadratic(x, bins, bins, pad_unit_end_derivatives(slopes), bound=torch.tensor(3.0))
>>> bool(torch.allclose(y, x, atol=1e-5)), bool(logdet.abs().max() < 1e-5)
(True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


#: nflows' defaults (``DEFAULT_MIN_BIN_WIDTH`` etc.), kept so that weights trained with nflows' splines mean the same here.
MIN_BIN_SIZE = 1e-3
MIN_DERIVATIVE = 1e-3
#: Unnormalised knot derivative that the softplus maps to exactly 1 (linear tails join with slope 1).
UNIT_DERIVATIVE = math.log(math.expm1(1 - MIN_DERIVATIVE))


def pad_unit_end_derivatives(inner: Tensor) -> Tensor:
    """(..., K − 1) inner unnormalised derivatives → (..., K + 1) with both ends at slope 1."""
    return F.pad(inner, (1, 1), value=UNIT_DERIVATIVE)


def _softmax_planes(planes: tuple[Tensor, ...]) -> tuple[list[Tensor], Tensor]:
    """Softmax across K planes (one per bin): the unnormalised exponentials and their sum."""
    top = planes[0]
    for plane in planes[1:]:
        top = torch.maximum(top, plane)
    exponentials = [torch.exp(plane - top) for plane in planes]
    total = exponentials[0]
    for e in exponentials[1:]:
        total = total + e
    return exponentials, total


def _knot_planes(planes: tuple[Tensor, ...], bound: Tensor) -> list[Tensor]:
    """K + 1 knot positions on [−B, B] from K bin-logit planes, bin sizes floored at ``MIN_BIN_SIZE``."""
    k = len(planes)
    exponentials, total = _softmax_planes(planes)
    scale = (1 - MIN_BIN_SIZE * k) / total
    knots, fraction = [-bound], None
    for e in exponentials[:-1]:
        size = MIN_BIN_SIZE + scale * e
        fraction = size if fraction is None else fraction + size
        knots.append(2 * bound * fraction - bound)
    # 2B and −B + 2B are exact in floating point, so the end knots sit exactly on ±B
    knots.append(bound)
    return knots


class _SelectBin(torch.autograd.Function):
    """The bin that holds each input, and its left knot, size and knot derivatives.

    The parameters come as planes, the bin axis first ((K, ...) views): K is small (8–16), so the
    bin axis is looped over in Python and every operation is elementwise over a plane. Compiled,
    a layer's whole spline is then a few vectorised loops over batch × features (with the bin axis
    innermost, as nflows lays it out, inductor can only gather, element by element).

    Forward: softmax → knots → bin search (a running ``where`` over the inner knots), as nflows.
    Backward, by hand, because autograd through K selections keeps K intermediate planes per
    output: with k the bin, knot position X_k = −B + 2B Σ_{j<k} (m + c p_j) and size
    W_k = 2B (m + c p_k) (c = 1 − K m, p = softmax(u)) give ∂L/∂p_j = 2Bc (ḡ_X [j < k] + ḡ_W [j = k])
    and ∂L/∂u = p ⊙ (∂L/∂p − ⟨p, ∂L/∂p⟩); the derivatives d = m_d + softplus(u_d) give
    ∂L/∂u_d = sigmoid(u_d) ⊙ (ḡ_{d_k} [j = k] + ḡ_{d_k+1} [j = k + 1]). The bin index is piecewise
    constant, so the inputs receive no gradient here.
    """

    @staticmethod
    def forward(ctx, inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, bound, inverse):
        x_knots, y_knots = _knot_planes(unnormalized_widths.unbind(0), bound), _knot_planes(unnormalized_heights.unbind(0), bound)
        u = unnormalized_derivatives.unbind(0)
        search = y_knots if inverse else x_knots
        x_k, x_k1, y_k, y_k1, u_k, u_k1 = x_knots[0], x_knots[1], y_knots[0], y_knots[1], u[0], u[1]
        index = torch.zeros_like(inputs)  # the bin, as a float plane (compares and selects stay elementwise)
        for j in range(1, len(x_knots) - 1):
            above = inputs >= search[j]
            index = index + above.to(inputs.dtype)
            x_k, x_k1 = torch.where(above, x_knots[j], x_k), torch.where(above, x_knots[j + 1], x_k1)
            y_k, y_k1 = torch.where(above, y_knots[j], y_k), torch.where(above, y_knots[j + 1], y_k1)
            u_k, u_k1 = torch.where(above, u[j], u_k), torch.where(above, u[j + 1], u_k1)
        ctx.save_for_backward(unnormalized_widths, unnormalized_heights, index, u_k, u_k1, bound)
        return x_k, x_k1 - x_k, y_k, y_k1 - y_k, MIN_DERIVATIVE + F.softplus(u_k), MIN_DERIVATIVE + F.softplus(u_k1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_x, g_w, g_y, g_h, g_d, g_d1):
        unnormalized_widths, unnormalized_heights, index, u_k, u_k1, bound = ctx.saved_tensors
        k = unnormalized_widths.shape[0]
        scale = (2 * (1 - MIN_BIN_SIZE * k)) * bound
        zero = torch.zeros_like(g_x)

        def logits_grad(logits: Tensor, g_knot: Tensor, g_size: Tensor) -> Tensor:
            exponentials, total = _softmax_planes(logits.unbind(0))
            g_knot, g_size = scale * g_knot, scale * g_size
            g_p = [torch.where(index > j, g_knot, torch.where(index == j, g_size, zero)) for j in range(k)]
            p_dot_g = exponentials[0] * g_p[0]
            for e, g in zip(exponentials[1:], g_p[1:]):
                p_dot_g = p_dot_g + e * g
            p_dot_g = p_dot_g / total
            return torch.stack([e / total * (g - p_dot_g) for e, g in zip(exponentials, g_p)])

        g_left, g_right = torch.sigmoid(u_k) * g_d, torch.sigmoid(u_k1) * g_d1
        g_derivatives = torch.stack([torch.where(index == j, g_left, torch.where(index == j - 1, g_right, zero)) for j in range(k + 1)])
        return None, logits_grad(unnormalized_widths, g_x, g_w), logits_grad(unnormalized_heights, g_y, g_h), g_derivatives, None, None


def rational_quadratic(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    bound: Tensor,
    tails: Tensor | None = None,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """y = s(x) (or s⁻¹(x) if ``inverse``) elementwise, and log|dy/dx|.

    Args:
        inputs: (...) values.
        unnormalized_widths, unnormalized_heights: (..., K) softmax logits of the bins. Any
            strides: the bins are read as planes ``[..., j]``, fastest when each plane is
            contiguous in the last input dimension (a (..., K) view of (K, ...)-ordered memory).
        unnormalized_derivatives: (..., K + 1) softplus arguments of the knot derivatives, ends
            included (:func:`pad_unit_end_derivatives` for linear tails).
        bound: half-width B of the spline's square [−B, B]², broadcastable to ``inputs``, in
            their dtype (π made in float32 and converted is not π in float64).
        tails: bool, broadcastable to ``inputs``: True where the map is the identity outside
            [−B, B] (linear tails); elsewhere inputs are clamped into the interval (circles).
            ``None``: linear tails everywhere.
    """
    bound = torch.as_tensor(bound, dtype=inputs.dtype, device=inputs.device).expand_as(inputs)
    if torch.compiler.is_compiling() and torch.is_grad_enabled():
        # Compiled, the spline is one fused loop whose cost is memory traffic: saved for the
        # backward, its ~40 intermediate planes cost more to write and read back than the whole
        # elementwise forward costs to recompute from the inputs (a coupling layer's forward and
        # backward at batch 1024: 11.0 → 8.8 ms; data_free_benchmarks/RESULTS.md, "Flow throughput").
        # Eagerly the recomputation would be a net cost, so only the compiled path checkpoints.
        return checkpoint(_rational_quadratic, inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives,
                          bound, tails, inverse, use_reentrant=False)
    return _rational_quadratic(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, bound, tails, inverse)


def _rational_quadratic(inputs: Tensor, unnormalized_widths: Tensor, unnormalized_heights: Tensor, unnormalized_derivatives: Tensor,
                        bound: Tensor, tails: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
    """:func:`rational_quadratic` with ``bound`` already expanded to the inputs' shape."""
    clamped = torch.minimum(torch.maximum(inputs, -bound), bound)
    planes = (unnormalized_widths.movedim(-1, 0), unnormalized_heights.movedim(-1, 0), unnormalized_derivatives.movedim(-1, 0))
    x_k, w_k, y_k, h_k, d_k, d_k1 = _SelectBin.apply(clamped, *planes, bound, inverse)
    slope = h_k / w_k
    curvature = d_k + d_k1 - 2 * slope

    if inverse:
        offset = clamped - y_k
        a = offset * curvature + h_k * (slope - d_k)
        b = h_k * d_k - offset * curvature
        c = -slope * offset
        root = (2 * c) / (-b - torch.sqrt((b.square() - 4 * a * c).clamp(min=0.0)))
        xi = root
        outputs = root * w_k + x_k
    else:
        xi = (clamped - x_k) / w_k
    xi_1m_xi = xi * (1 - xi)
    denominator = slope + curvature * xi_1m_xi
    if not inverse:
        outputs = y_k + h_k * (slope * xi.square() + d_k * xi_1m_xi) / denominator
    log_derivative = torch.log(slope.square() * (d_k1 * xi.square() + 2 * slope * xi_1m_xi + d_k * (1 - xi).square())) - 2 * torch.log(denominator)
    if inverse:
        log_derivative = -log_derivative

    outside = inputs.abs() > bound
    if tails is not None:
        outside = outside & tails
    return torch.where(outside, inputs, outputs), torch.where(outside, torch.zeros_like(log_derivative), log_derivative)

