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

import math

import torch
import torch.nn.functional as F
from nflows.nn.nets import ResidualNet
from nflows.transforms import AffineCouplingTransform, PiecewiseRationalQuadraticCouplingTransform, Transform
from torch import nn

from flowcg.coordinates.geometry import wrap
from flowcg.errors import ConfigError
from flowcg.flows.splines import UNIT_DERIVATIVE, pad_unit_end_derivatives, rational_quadratic

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


class SplineCoupling(PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic coupling (linear tails) evaluated by :func:`~flowcg.flows.splines.rational_quadratic`:
    the same parameters and values, without nflows' masked indexing (see :mod:`flowcg.flows.splines`)."""

    def _piecewise_cdf(self, inputs, transform_params, inverse=False):
        k = self.num_bins
        # nflows scales the bin logits by 1/sqrt(hidden width) of its ResidualNet; kept, so weights mean the same
        scale = self.transform_net.hidden_features**-0.5
        bound = inputs.new_tensor(self.tail_bound)
        return rational_quadratic(
            inputs, transform_params[..., :k] * scale, transform_params[..., k : 2 * k] * scale,
            pad_unit_end_derivatives(transform_params[..., 2 * k :]), bound, None, inverse,
        )


def coupling_layer(kind: str, features: int, parity: int, hidden: int = 64, n_blocks: int = 2, num_bins: int = 8, tail_bound: float = 5.0) -> Transform:
    """One identity-initialised coupling layer of the given ``kind`` (see :data:`COUPLINGS`)."""
    if features < 2:
        raise ConfigError(f"coupling layers need at least 2 features, got {features}")
    mask = alternating_mask(features, parity)
    create = _conditioner_factory(hidden, n_blocks)
    if kind == "affine":
        return AffineCouplingTransform(mask, create)
    if kind == "spline":
        layer = SplineCoupling(mask, create, num_bins=num_bins, tails="linear", tail_bound=tail_bound)
        # params per transformed feature: K widths, K heights, K−1 inner derivatives
        bias = layer.transform_net.final_layer.bias.detach().view(layer.num_transform_features, 3 * num_bins - 1)
        bias[:, 2 * num_bins :] = UNIT_DERIVATIVE
        return layer
    raise ConfigError(f"unknown coupling '{kind}'; choose one of {', '.join(COUPLINGS)}")


class ReducedPrecisionLinear(nn.Linear):
    """``nn.Linear`` whose matrix product runs in ``compute_dtype`` when that is set (None: as
    ``nn.Linear``): the input and the weight rounded to it, the product (accumulated in float32 by
    the BLAS) converted back to the input's dtype, the bias added there. Activations between such
    layers stay at full precision, so compiled and eager evaluations round at the same places and
    agree to float32 round-off (under ``torch.autocast`` the activations and bias additions run in
    bfloat16 too, and inductor's fused order of them differed from eager's by up to 0.1 in log-det).
    Its backward runs the two gradient products in ``compute_dtype`` as well."""

    compute_dtype: torch.dtype | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is None:
            return super().forward(inputs)
        return F.linear(inputs.to(self.compute_dtype), self.weight.to(self.compute_dtype)).to(inputs.dtype) + self.bias


def _save_output_rows_feature_major(module: "MixedSplineCoupling", state_dict, prefix, local_metadata) -> None:
    """State-dict hook: the output layer's rows back in the saved (feature by feature) order."""
    for name in ("weight", "bias"):
        key = f"{prefix}conditioner.final_layer.{name}"
        state_dict[key] = state_dict[key][torch.argsort(module._parameter_major)]


def _load_output_rows_parameter_major(module: "MixedSplineCoupling", state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: saved (feature by feature) rows into the order the layer holds."""
    for name in ("weight", "bias"):
        key = f"{prefix}conditioner.final_layer.{name}"
        if key in state_dict and state_dict[key].shape[0] == len(module._parameter_major):  # else load_state_dict reports it
            state_dict[key] = state_dict[key][module._parameter_major]


class MixedSplineCoupling(Transform):
    """Spline coupling on R^a × (S¹)^b: the features in ``transform_mask`` are transformed
    conditioned on the rest, rational-quadratic splines with linear tails on [−B, B] for line
    features and circular splines (:func:`~flowcg.flows.circular.circular_spline`) for the
    ``periodic_mask`` ones.

    The conditioner sees periodic features as (cos τ, sin τ), so its output is continuous on the
    circle. Identity at initialisation (zero output layer, unit knot derivatives, zero shift).
    Per transformed feature it outputs K widths, K heights and K − 1 inner derivatives, plus for
    a periodic one the shared end derivative and the rotation δ (rad).

    ``conditioner_dtype`` (None: the inputs' dtype) runs the conditioner's matrix products in that
    dtype (bfloat16: mixed-precision training, set by
    :meth:`~flowcg.flows.model.StructuredFlow.conditioner_precision`; :class:`ReducedPrecisionLinear`).
    They are most of a training step's arithmetic; the activations, the spline, the log-det and
    the parameters stay in the inputs' dtype, and forward and inverse compute the same spline
    parameters from the same untransformed features, so the layer stays an exact bijection with an
    exact log-det in either setting.
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
        self.register_buffer("_transformed", torch.cat([self._line, self._circle]), persistent=False)
        self.register_buffer("_is_line", torch.arange(len(self._transformed)) < len(self._line), persistent=False)
        self.num_bins, self.tail_bound = num_bins, tail_bound
        k = num_bins
        n_in = len(self._condition_line) + 2 * len(self._condition_circle)
        n_out = len(self._line) * (3 * k - 1) + len(self._circle) * (3 * k + 1)
        self.conditioner = _conditioner_factory(hidden, n_blocks)(n_in, n_out)
        self._linear_layers = [m for m in self.conditioner.modules() if type(m) is nn.Linear]
        for linear in self._linear_layers:
            linear.__class__ = ReducedPrecisionLinear  # same parameters and state dict; the product's dtype settable
        bias = self.conditioner.final_layer.bias.detach()
        n_line_params = len(self._line) * (3 * k - 1)
        line_bias, circle_bias = bias[:n_line_params], bias[n_line_params:]
        line_bias.view(len(self._line), 3 * k - 1)[:, 2 * k :] = UNIT_DERIVATIVE
        circle_bias.view(len(self._circle), 3 * k + 1)[:, 2 * k : 3 * k] = UNIT_DERIVATIVE
        # Saved weights hold the output layer's rows feature by feature (nflows' layout); in memory
        # they are held parameter by parameter, so that each spline parameter comes out of the
        # matrix product as one contiguous (batch, features) plane (see flowcg.flows.splines), with
        # no gather of the rows in each forward and no scatter of their gradient in each backward.
        # The state-dict hooks convert between the two.
        parameter_major = torch.cat([
            torch.arange(n_line_params).view(len(self._line), 3 * k - 1).T.reshape(-1),
            n_line_params + torch.arange(n_out - n_line_params).view(len(self._circle), 3 * k + 1).T.reshape(-1),
        ])
        self.register_buffer("_parameter_major", parameter_major, persistent=False)
        final = self.conditioner.final_layer
        with torch.no_grad():
            final.weight.copy_(final.weight[parameter_major])
            final.bias.copy_(final.bias[parameter_major])
        self._register_state_dict_hook(_save_output_rows_feature_major)
        self._register_load_state_dict_pre_hook(_load_output_rows_parameter_major, with_module=True)

    def _transform(self, inputs: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        k, batch = self.num_bins, inputs.shape[0]
        circle_condition = inputs[:, self._condition_circle]
        features = torch.cat([inputs[:, self._condition_line], torch.cos(circle_condition), torch.sin(circle_condition)], dim=-1)
        params = self.conditioner(features)  # (B, n_out), parameter by parameter (line block, then circle block)
        n_line = len(self._line) * (3 * k - 1)
        line = params[:, :n_line].view(batch, 3 * k - 1, len(self._line))
        circle = params[:, n_line:].view(batch, 3 * k + 1, len(self._circle))
        # one spline call over [line | circle] features, (batch, parameter, feature) planes: the
        # circle's end derivative is shared by both ends (periodicity), a line's ends have slope 1
        # (linear tails)
        circle_end = circle[:, 3 * k - 1 : 3 * k]
        line_derivatives = F.pad(line[:, 2 * k :], (0, 0, 1, 1), value=UNIT_DERIVATIVE)
        derivatives = torch.cat([line_derivatives, torch.cat([circle_end, circle[:, 2 * k : 3 * k - 1], circle_end], 1)], 2)
        widths = torch.cat([line[:, :k], circle[:, :k]], 2)
        heights = torch.cat([line[:, k : 2 * k], circle[:, k : 2 * k]], 2)
        shift = torch.cat([inputs.new_zeros(batch, len(self._line)), circle[:, 3 * k]], 1)
        x = inputs[:, self._transformed]
        if inverse:
            x = torch.where(self._is_line, x, wrap(x - shift))
        # half-widths made in the inputs' dtype each call: a float32 π converted to float64 is not π
        bound = torch.where(self._is_line, inputs.new_tensor(self.tail_bound), inputs.new_tensor(math.pi))
        y, logdet = rational_quadratic(x, widths.mT, heights.mT, derivatives.mT, bound, self._is_line, inverse)
        if not inverse:
            y = torch.where(self._is_line, y, wrap(y + shift))
        return inputs.index_copy(1, self._transformed, y), logdet.sum(-1)

    @property
    def conditioner_dtype(self) -> torch.dtype | None:
        """The dtype of the conditioner's matrix products; None: the inputs' (class docstring)."""
        return self._linear_layers[0].compute_dtype

    @conditioner_dtype.setter
    def conditioner_dtype(self, dtype: torch.dtype | None) -> None:
        for linear in self._linear_layers:
            linear.compute_dtype = dtype

    def forward(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(inputs, inverse=False)

    def inverse(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(inputs, inverse=True)
