"""Coupling layers from nflows, initialised at the identity.

Each layer transforms half of the features conditioned on the other half (alternating masks):
* ``spline``: monotone rational-quadratic splines (Durkan et al. 2019) on [−B, B], identity
  (linear) tails outside;
* ``affine``: RealNVP scale-and-shift (nflows' bounded sigmoid scale).

The conditioner networks are nflows ResidualNets whose output layer starts at zero. For the
spline the derivative outputs are shifted so every knot derivative is 1: the layer starts as the
identity, which keeps the slow latent aligned with its coordinates until training moves it. The
affine layer starts as a uniform contraction by nflows' sigmoid(2) ≈ 0.88.
"""

from __future__ import annotations

import numpy as np
import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import AffineCouplingTransform, PiecewiseRationalQuadraticCouplingTransform, Transform
from nflows.transforms.splines.rational_quadratic import DEFAULT_MIN_DERIVATIVE, unconstrained_rational_quadratic_spline
from torch import nn

from flowcg.flows.circular import circular_spline

COUPLINGS = ("spline", "affine")
#: Unnormalised knot derivative that nflows maps to exactly 1 (min_derivative + softplus): identity splines.
_UNIT_DERIVATIVE = float(np.log(np.expm1(1 - DEFAULT_MIN_DERIVATIVE)))


def alternating_mask(features: int, parity: int) -> torch.Tensor:
    """1 marks transformed features: every other one, starting at ``parity``."""
    mask = torch.zeros(features)
    mask[parity::2] = 1
    return mask


def _conditioner_factory(hidden: int, n_blocks: int):
    def create(in_features: int, out_features: int) -> nn.Module:
        net = ResidualNet(in_features, out_features, hidden_features=hidden, num_blocks=n_blocks, activation=torch.nn.functional.silu)
        nn.init.zeros_(net.final_layer.weight)
        nn.init.zeros_(net.final_layer.bias)
        return net

    return create


def coupling_layer(kind: str, features: int, parity: int, hidden: int = 64, n_blocks: int = 2, num_bins: int = 8, tail_bound: float = 5.0) -> Transform:
    """One identity-initialised coupling layer of the given ``kind`` (see :data:`COUPLINGS`)."""
    if features < 2:
        raise ValueError(f"coupling layers need at least 2 features, got {features}")
    mask = alternating_mask(features, parity)
    create = _conditioner_factory(hidden, n_blocks)
    if kind == "affine":
        return AffineCouplingTransform(mask, create)
    if kind == "spline":
        layer = PiecewiseRationalQuadraticCouplingTransform(mask, create, num_bins=num_bins, tails="linear", tail_bound=tail_bound)
        # params per transformed feature: K widths, K heights, K−1 inner derivatives
        bias = layer.transform_net.final_layer.bias.detach().view(layer.num_transform_features, 3 * num_bins - 1)
        bias[:, 2 * num_bins :] = _UNIT_DERIVATIVE
        return layer
    raise ValueError(f"unknown coupling '{kind}'; choose one of {', '.join(COUPLINGS)}")


class MixedSplineCoupling(Transform):
    """Spline coupling on R^a × (S¹)^b: the features in ``transform_mask`` are transformed
    conditioned on the rest, rational-quadratic splines with linear tails on [−B, B] for line
    features and circular splines (:func:`~flowcg.flows.circular.circular_spline`) for the
    ``periodic_mask`` ones.

    The conditioner sees periodic features as (cos τ, sin τ), so its output is continuous on the
    circle. Identity at initialisation (zero output layer, unit knot derivatives, zero shift).
    Per transformed feature it outputs K widths, K heights and K − 1 inner derivatives, plus for
    a periodic one the shared end derivative and the rotation δ (rad).
    """

    def __init__(self, transform_mask: torch.Tensor, periodic_mask: torch.Tensor, hidden: int = 128,
                 n_blocks: int = 2, num_bins: int = 8, tail_bound: float = 5.0):
        super().__init__()
        transformed = torch.as_tensor(transform_mask, dtype=torch.bool)
        periodic = torch.as_tensor(periodic_mask, dtype=torch.bool)
        if transformed.shape != periodic.shape or not transformed.any() or transformed.all():
            raise ValueError("transform_mask must match periodic_mask in shape and split the features into two non-empty parts")
        for name, mask in {
            "_condition_line": ~transformed & ~periodic, "_condition_circle": ~transformed & periodic,
            "_line": transformed & ~periodic, "_circle": transformed & periodic,
        }.items():
            self.register_buffer(name, mask.nonzero().ravel())
        self.num_bins, self.tail_bound = num_bins, tail_bound
        k = num_bins
        n_in = len(self._condition_line) + 2 * len(self._condition_circle)
        n_out = len(self._line) * (3 * k - 1) + len(self._circle) * (3 * k + 1)
        self.conditioner = _conditioner_factory(hidden, n_blocks)(n_in, n_out)
        bias = self.conditioner.final_layer.bias.detach()
        line_bias, circle_bias = bias[: len(self._line) * (3 * k - 1)], bias[len(self._line) * (3 * k - 1) :]
        line_bias.view(len(self._line), 3 * k - 1)[:, 2 * k :] = _UNIT_DERIVATIVE
        circle_bias.view(len(self._circle), 3 * k + 1)[:, 2 * k : 3 * k] = _UNIT_DERIVATIVE

    def _transform(self, inputs: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.num_bins
        circle_condition = inputs[:, self._condition_circle]
        features = torch.cat([inputs[:, self._condition_line], torch.cos(circle_condition), torch.sin(circle_condition)], dim=-1)
        params = self.conditioner(features)
        batch = inputs.shape[0]
        n_line = len(self._line) * (3 * k - 1)
        line_params = params[:, :n_line].view(batch, len(self._line), 3 * k - 1)
        circle_params = params[:, n_line:].view(batch, len(self._circle), 3 * k + 1)

        outputs = inputs.clone()
        logdet = inputs.new_zeros(batch)
        if len(self._line):
            y, ld = unconstrained_rational_quadratic_spline(
                inputs[:, self._line], line_params[..., :k], line_params[..., k : 2 * k], line_params[..., 2 * k :],
                inverse=inverse, tails="linear", tail_bound=self.tail_bound,
            )
            outputs[:, self._line] = y
            logdet = logdet + ld.sum(-1)
        if len(self._circle):
            y, ld = circular_spline(
                inputs[:, self._circle], circle_params[..., :k], circle_params[..., k : 2 * k],
                circle_params[..., 2 * k : 3 * k - 1], circle_params[..., 3 * k - 1], circle_params[..., 3 * k], inverse=inverse,
            )
            outputs[:, self._circle] = y
            logdet = logdet + ld.sum(-1)
        return outputs, logdet

    def forward(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(inputs, inverse=False)

    def inverse(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(inputs, inverse=True)
