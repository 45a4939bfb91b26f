"""Densities for the fast latent variables given the slow ones, p(z_fast | z_slow).

* :class:`ConditionalDiagonalGaussian`: N(z_f; m(z_s), diag s(z_s)²) with
  m(z_s) = A z_s + MLP_m(z_s) and log s(z_s) = c + MLP_s(z_s). The linear term A lets the fast
  block follow the slow one exactly when the relation is linear (as in the slow/fast mixture);
  the MLP heads start at zero, so training starts from N(0, I).
* :class:`StandardNormal`: N(0, I) independent of z_s (the plain option).

Both take z_slow of shape (B, ds) and return / score z_fast of shape (B, df); df may be 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _zero_init_mlp(in_features: int, out_features: int, hidden: int, n_hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    head = nn.Linear(width, out_features)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


def _diag_normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    return (-0.5 * ((z - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class StandardNormal(nn.Module):
    """p(z_f | z_s) = N(0, I_df), ignoring z_s."""

    def __init__(self, slow_dim: int, fast_dim: int):
        super().__init__()
        self.fast_dim = fast_dim

    def rsample(self, z_slow: Tensor) -> Tensor:
        return torch.randn(z_slow.shape[0], self.fast_dim, device=z_slow.device, dtype=z_slow.dtype)

    def log_prob(self, z_fast: Tensor, z_slow: Tensor) -> Tensor:
        zero = torch.zeros_like(z_fast)
        return _diag_normal_log_prob(z_fast, zero, zero)


class ConditionalDiagonalGaussian(nn.Module):
    """p(z_f | z_s) = N(A h(z_s) + MLP_m(h(z_s)), diag exp(c + MLP_s(h(z_s)))²), with h the identity,
    or h(z_s) = (cos z_s, sin z_s) when the slow latents are angles (``periodic_slow``), so that the
    conditional is continuous on the circle."""

    def __init__(self, slow_dim: int, fast_dim: int, hidden: int = 64, n_hidden_layers: int = 2, periodic_slow: bool = False):
        super().__init__()
        self.fast_dim = fast_dim
        self.periodic_slow = periodic_slow
        features = 2 * slow_dim if periodic_slow else slow_dim
        self.linear_mean = nn.Linear(features, fast_dim, bias=False)
        nn.init.zeros_(self.linear_mean.weight)
        self.mean_net = _zero_init_mlp(features, fast_dim, hidden, n_hidden_layers)
        self.log_std_net = _zero_init_mlp(features, fast_dim, hidden, n_hidden_layers)
        self.log_std_offset = nn.Parameter(torch.zeros(fast_dim))

    def mean_and_log_std(self, z_slow: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([torch.cos(z_slow), torch.sin(z_slow)], dim=-1) if self.periodic_slow else z_slow
        mean = self.linear_mean(h) + self.mean_net(h)
        log_std = self.log_std_offset + self.log_std_net(h)
        return mean, log_std

    def rsample(self, z_slow: Tensor) -> Tensor:
        mean, log_std = self.mean_and_log_std(z_slow)
        return mean + torch.exp(log_std) * torch.randn_like(mean)

    def log_prob(self, z_fast: Tensor, z_slow: Tensor) -> Tensor:
        mean, log_std = self.mean_and_log_std(z_slow)
        return _diag_normal_log_prob(z_fast, mean, log_std)
