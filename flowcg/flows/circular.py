"""Circular building blocks: a latent-to-circle embedding and circular rational-quadratic splines.

nflows has rational-quadratic splines on an interval and on the line (linear tails) but none on
the circle, so these are written here, on top of nflows' interval spline.

Circular spline (Rezende et al. 2020, "Normalizing flows on tori and spheres"). A monotone
rational-quadratic spline s on [−π, π] with s(±π) = ±π whose end derivatives are equal is a C¹
diffeomorphism of the circle that fixes the point −π ≡ π. Composed with a rotation by δ,

    f(τ) = wrap(s(τ) + δ),      log|f'(τ)| = log s'(τ),

it can move mass across the cut at ±π, and every orientation-preserving circle diffeomorphism
is reachable this way. ``wrap`` maps to [−π, π).

Circle embedding. The structured latent is Gaussian on R; a periodic coordinate needs a density
on the circle. The probability-integral transform

    τ = π (2Φ(z) − 1) = π erf(z / √2),      log|dτ/dz| = ½ log(2π) − z²/2,

sends N(0, 1) to the uniform density on (−π, π) exactly, and any other latent density (a
mixture component, a conditional Gaussian) to the corresponding density on the circle.
"""

from __future__ import annotations

import math

import torch
from nflows.transforms import Transform
from nflows.transforms.splines.rational_quadratic import rational_quadratic_spline
from torch import Tensor

from flowcg.coordinates.geometry import wrap

#: Keeps erfinv finite in float32 (|z| ≤ 5.4): τ/π is clipped to ±(1 − ε).
_ERF_EPS = 6e-8


def circular_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_inner_derivatives: Tensor,
    unnormalized_end_derivative: Tensor,
    shift: Tensor,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """f(τ) = wrap(s(τ) + δ) on angles τ ∈ [−π, π) (rad) and log|f'|, elementwise.

    Args:
        inputs: angles, shape (...).
        unnormalized_widths, unnormalized_heights: (..., K) bin parameters (softmax-normalised).
        unnormalized_inner_derivatives: (..., K − 1) knot derivatives (softplus).
        unnormalized_end_derivative: (...,) the derivative shared by both ends (periodicity).
        shift: (...,) the rotation δ in rad.
        inverse: apply f⁻¹ instead (log|df⁻¹/dτ| returned).
    """
    end = unnormalized_end_derivative[..., None]
    derivatives = torch.cat([end, unnormalized_inner_derivatives, end], dim=-1)
    if inverse:
        inputs = wrap(inputs - shift)
    inputs = inputs.clamp(-math.pi, math.pi)
    outputs, logabsdet = rational_quadratic_spline(
        inputs, unnormalized_widths, unnormalized_heights, derivatives, inverse=inverse,
        left=-math.pi, right=math.pi, bottom=-math.pi, top=math.pi,
    )
    if not inverse:
        outputs = wrap(outputs + shift)
    return outputs, logabsdet


class CircleEmbedding(Transform):
    """Fixed map R → (−π, π) on the ``periodic_mask`` features, τ = π erf(z/√2); identity elsewhere."""

    def __init__(self, periodic_mask: Tensor):
        super().__init__()
        self.register_buffer("periodic_mask", torch.as_tensor(periodic_mask, dtype=torch.bool))

    def forward(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        z = inputs[:, self.periodic_mask]
        outputs = inputs.clone()
        outputs[:, self.periodic_mask] = math.pi * torch.erf(z / math.sqrt(2.0))
        return outputs, (0.5 * math.log(2 * math.pi) - 0.5 * z.square()).sum(-1)

    def inverse(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        ratio = (inputs[:, self.periodic_mask] / math.pi).clamp(-1 + _ERF_EPS, 1 - _ERF_EPS)
        z = math.sqrt(2.0) * torch.erfinv(ratio)
        outputs = inputs.clone()
        outputs[:, self.periodic_mask] = z
        return outputs, -(0.5 * math.log(2 * math.pi) - 0.5 * z.square()).sum(-1)
