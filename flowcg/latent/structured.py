"""The structured latent space z = (z_slow, z_fast) with p(z) = p(z_slow) · p(z_fast | z_slow)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowcg.errors import ConfigError
from flowcg.latent.mixture import DiagonalGaussianMixture
from flowcg.latent.product import BlockMixture


class StructuredLatent(nn.Module):
    """Slow CVs with a mixture prior, fast variables with a conditional density.

    Args:
        slow: prior over z_slow ∈ R^ds (one mixture, or a product of mixtures over blocks).
        fast: conditional density of z_fast ∈ R^df given z_slow (df may be 0).
    """

    def __init__(self, slow: DiagonalGaussianMixture | BlockMixture, fast: nn.Module):
        super().__init__()
        self.slow = slow
        self.fast = fast
        self.slow_dim = slow.dim
        self.fast_dim = fast.fast_dim

    @property
    def dim(self) -> int:
        return self.slow_dim + self.fast_dim

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, : self.slow_dim], z[:, self.slow_dim :]

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z_slow) + log p(z_fast | z_slow), shape (B,)."""
        z_slow, z_fast = self.split(z)
        return self.slow.log_prob(z_slow) + self.fast.log_prob(z_fast, z_slow)

    def rsample_stratified(self, n: int) -> tuple[Tensor, Tensor]:
        """Reparameterised draws, stratified over the slow mixture components.

        Returns z (n, dim) and sample weights (n,) that sum to 1 (see DiagonalGaussianMixture).
        """
        z_slow, sample_weights = self.slow.rsample_stratified(n)
        return torch.cat([z_slow, self.fast.rsample(z_slow)], dim=1), sample_weights

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n iid draws from p(z)."""
        z_slow = self.slow.sample(n)
        return torch.cat([z_slow, self.fast.rsample(z_slow)], dim=1)

    def rsample_given_slow(self, z_slow: Tensor) -> Tensor:
        """z = (z_slow, z_fast) with z_fast ~ p(z_fast | z_slow) reparameterised, one draw per row of z_slow."""
        return torch.cat([z_slow, self.fast.rsample(z_slow)], dim=1)

    @torch.no_grad()
    def join_slow_(self, n_components: int) -> DiagonalGaussianMixture:
        """The slow prior as one mixture of ``n_components`` over all slow latents, in place, returned.

        A product of block mixtures (:class:`BlockMixture`) is replaced by a joint mixture with
        placeholder parameters (to be fitted or loaded); a joint one is resized. The product trains
        well (K components per block hold K^B combinations) but cannot hold the blocks' correlations
        in p(z_slow); a joint mixture fitted to weighted draws can (:mod:`flowcg.training.prior_refit`)."""
        if isinstance(self.slow, BlockMixture):
            reference = next(self.slow.parameters())
            self.slow = DiagonalGaussianMixture(self.slow_dim, n_components, periodic=self.slow.periodic).to(reference)
        return self.slow.resize_(n_components)

    def uniform_slow(self, n: int) -> Tensor:
        """n draws of z_slow uniform on the torus [−π, π)^ds: the defensive part of a slow proposal.

        Only periodic (torsion) slow latents have a bounded domain to be uniform on."""
        if not self.slow.periodic:
            raise ConfigError("a uniform slow proposal needs periodic slow latents (model.slow_prior=wrapped)")
        ref = next(self.slow.parameters())
        return (torch.rand(n, self.slow_dim, device=ref.device, dtype=ref.dtype) * 2 - 1) * torch.pi

    def uniform_slow_log_prob(self) -> float:
        """log density of :meth:`uniform_slow`: −ds log 2π."""
        return -self.slow_dim * math.log(2 * math.pi)
