"""Circular building blocks: a latent-to-circle embedding and circular rational-quadratic splines.

nflows has rational-quadratic splines on an interval and on the line (linear tails) but none on
the circle, so these are written here, on top of :func:`flowcg.flows.splines.rational_quadratic`.

Circular spline (Rezende et al. 2020, "Normalizing flows on tori and spheres"). A monotone
rational-quadratic spline s on [−π, π] with s(±π) = ±π whose end derivatives are equal is a C¹
diffeomorphism of the circle that fixes the point −π ≡ π. Composed with a rotation by δ,

    f(τ) = wrap(s(τ) + δ),      log|f'(τ)| = log s'(τ),

it can move mass across the cut at ±π, and every orientation-preserving circle diffeomorphism
is reachable this way. ``wrap`` maps to [−π, π).

Circle embedding. The structured latent is Gaussian on R; a periodic coordinate needs a density
on the circle. The map

    τ = 2 atan(z),      log|dτ/dz| = log 2 − log(1 + z²),

sends the standard Cauchy density to the uniform one on (−π, π) exactly, and N(0, 1) to a smooth
bump (density 0.20 at τ = 0, 0 at the seam ±π) that the circular splines reshape. Its log-det
grows only logarithmically in |z| with a gradient bounded by 1, so a wide latent never saturates
it. (The probability-integral map π erf(z/√2) gives N(0, 1) ↦ uniform exactly, but its log-det
−z²/2 is quadratic: in float32 it saturated for |z| ≳ 5 and fed gradient spikes into training.)
"""

from __future__ import annotations

import math

import torch
from nflows.transforms import Transform
from torch import Tensor

from flowcg.coordinates.geometry import wrap
from flowcg.flows.splines import rational_quadratic

#: τ/2 is clipped just inside ±π/2 so that tan stays finite at the seam (|z| ≤ 1e6).
_HALF_PI_INSIDE = math.pi / 2 - 1e-6


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
    outputs, logabsdet = rational_quadratic(
        inputs, unnormalized_widths, unnormalized_heights, derivatives, bound=inputs.new_tensor(math.pi), tails=torch.tensor(False), inverse=inverse
    )
    if not inverse:
        outputs = wrap(outputs + shift)
    return outputs, logabsdet


class CircleEmbedding(Transform):
    """Fixed map R → (−π, π) on the ``periodic_mask`` features, τ = 2 atan(z); identity elsewhere."""

    def __init__(self, periodic_mask: Tensor):
        super().__init__()
        self.register_buffer("periodic_mask", torch.as_tensor(periodic_mask, dtype=torch.bool))

    def forward(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        outputs = torch.where(self.periodic_mask, 2.0 * torch.atan(inputs), inputs)
        return outputs, self._log_derivative(inputs)

    def inverse(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        # torch.where over all features rather than masked indexing: fixed shapes, no host sync
        half = (0.5 * inputs).clamp(-_HALF_PI_INSIDE, _HALF_PI_INSIDE)
        outputs = torch.where(self.periodic_mask, torch.tan(half), inputs)
        return outputs, -self._log_derivative(outputs)

    def _log_derivative(self, z: Tensor) -> Tensor:
        """log|dτ/dz| summed over the periodic features of latents z."""
        return torch.where(self.periodic_mask, math.log(2.0) - torch.log1p(z.square()), torch.zeros_like(z)).sum(-1)
