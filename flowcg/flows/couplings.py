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
from nflows.transforms.splines.rational_quadratic import DEFAULT_MIN_DERIVATIVE
from torch import nn

COUPLINGS = ("spline", "affine")


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
        unit_derivative = float(np.log(np.expm1(1 - DEFAULT_MIN_DERIVATIVE)))
        bias = layer.transform_net.final_layer.bias.detach().view(layer.num_transform_features, 3 * num_bins - 1)
        bias[:, 2 * num_bins :] = unit_derivative
        return layer
    raise ValueError(f"unknown coupling '{kind}'; choose one of {', '.join(COUPLINGS)}")
