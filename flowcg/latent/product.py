"""A product of independent mixtures over disjoint blocks of the slow latents.

p(z) = Π_b p_b(z_{S_b}),  p_b = Σ_k π_bk N(z_{S_b}; μ_bk, diag σ_bk²)  (wrapped if periodic),

with the blocks S_b a partition of the slow dimensions. On a peptide the slow latents are the
backbone (φ_i, ψ_i) of every residue; one joint mixture over the 2R-torus needs a component for
every *combination* of basins (≈ 3^R), while a product of R two-dimensional mixtures holds K^R
combinations with R·K components, and the couplings of the flow (which all see every slow latent)
model the residues' correlations. One block is the joint mixture itself.

Reparameterised draws are stratified per block: block b's n draws are split evenly over its K_b
components, n_bk each, and the blocks' component labels are shuffled independently, so a draw lands
in the combination (k_1 … k_B) with probability Π_b n_bk / n. The weight

    w_i ∝ Π_b π_{b k_b(i)} · n / n_{b k_b(i)},   normalised to Σ w_i = 1,

makes Σ_i w_i f(z_i) a ratio estimate of E_p[f] whose gradient reaches every π_b (the unnormalised
weights are exactly unbiased; with one block they are the stratified weights π_k / n_k of
:class:`~flowcg.latent.mixture.DiagonalGaussianMixture`).

The forward-KL (weighted maximum-likelihood) fit of a product family is the product of the fits of
the marginals (KL(p ‖ Π q_b) = Σ_b KL(p_b ‖ q_b) + const), so :meth:`BlockMixture.fit_weighted`
fits each block to its own coordinates of the weighted points.

Example:
    >>> prior = BlockMixture([[0, 1], [2, 3]], n_components=3, periodic=True)
    >>> z, w = prior.rsample_stratified(12)
    >>> z.shape, round(float(w.detach().sum()), 6), prior.log_prob(z).shape
    (torch.Size([12, 4]), 1.0, torch.Size([12]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowcg.errors import ConfigError
from flowcg.latent.mixture import DiagonalGaussianMixture


class BlockMixture(nn.Module):
    """Independent :class:`DiagonalGaussianMixture` priors on disjoint blocks of the slow latents.

    Args:
        blocks: the slow dimensions of each block (lists of indices into z_slow); together a
            partition of ``range(dim)``.
        n_components: K of every block's mixture.
        init_spread, init_std, periodic: as for :class:`DiagonalGaussianMixture`.
        seed: block b's means are seeded with ``seed + b``.
    """

    def __init__(self, blocks: Sequence[Sequence[int]], n_components: int = 1, init_spread: float = 1.0,
                 init_std: float = 1.0, seed: int = 0, periodic: bool = False):
        super().__init__()
        blocks = [[int(i) for i in block] for block in blocks]
        flat = sorted(i for block in blocks for i in block)
        if not blocks or any(not block for block in blocks) or flat != list(range(len(flat))):
            raise ConfigError(f"slow blocks must partition the slow dimensions 0 … n−1, got {blocks}")
        self.dim = len(flat)
        self.periodic = periodic
        self.block_indices = blocks
        for b, block in enumerate(blocks):
            self.register_buffer(f"_index{b}", torch.tensor(block), persistent=False)
        self.blocks = nn.ModuleList(
            DiagonalGaussianMixture(len(block), n_components, init_spread, init_std, seed + b, periodic)
            for b, block in enumerate(blocks))

    @property
    def n_components(self) -> int:
        return self.blocks[0].n_components

    def _parts(self, z: Tensor) -> list[Tensor]:
        return [z.index_select(1, getattr(self, f"_index{b}")) for b in range(len(self.blocks))]

    def _assemble(self, parts: list[Tensor]) -> Tensor:
        z = parts[0].new_empty(parts[0].shape[0], self.dim)
        for b, part in enumerate(parts):
            z[:, getattr(self, f"_index{b}")] = part
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) = Σ_b log p_b(z_b), shape (B,)."""
        return sum(block.log_prob(part) for block, part in zip(self.blocks, self._parts(z)))

    def rsample_stratified(self, n: int) -> tuple[Tensor, Tensor]:
        """n reparameterised draws, stratified per block and shuffled across blocks (module docstring).

        Returns z (n, dim) and sample weights (n,) that sum to 1."""
        parts, log_weights = [], 0.0
        for block in self.blocks:
            z_block, weights = block.rsample_stratified(n)  # weights π_k / n_k, component-major
            if len(self.blocks) > 1:  # independent labels per block: every combination of components is drawn
                order = torch.randperm(n, device=z_block.device)
                z_block, weights = z_block[order], weights[order]
            parts.append(z_block)
            log_weights = log_weights + torch.log(weights)
        return self._assemble(parts), torch.softmax(log_weights, dim=0)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n iid draws from p(z), shape (n, dim)."""
        return self._assemble([block.sample(n) for block in self.blocks])

    @torch.no_grad()
    def resize_(self, n_components: int) -> "BlockMixture":
        """Every block to K = ``n_components`` in place (see :meth:`DiagonalGaussianMixture.resize_`)."""
        for block in self.blocks:
            block.resize_(n_components)
        return self

    @torch.no_grad()
    def fit_weighted(self, z: Tensor, weights: Tensor, seed: int = 0, **options) -> dict:
        """Fit every block to its coordinates of the weighted points z (B, dim) by EM (the product's
        forward-KL fit; options as for :meth:`DiagonalGaussianMixture.fit_weighted`). Returns
        ``{"iterations"}`` (the most any block took) and ``log_likelihood`` (the blocks' sum)."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"fit_weighted needs z (B, {self.dim}), got {tuple(z.shape)}")
        fits = [block.fit_weighted(part, weights, seed=seed + b, **options)
                for b, (block, part) in enumerate(zip(self.blocks, self._parts(z)))]
        return {"iterations": max(f["iterations"] for f in fits), "log_likelihood": sum(f["log_likelihood"] for f in fits),
                "blocks": len(fits)}
