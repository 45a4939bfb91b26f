"""Build a :class:`StructuredFlow` from plain options (what ``conf/model/*.yaml`` holds)."""

from __future__ import annotations

from nflows.transforms import CompositeTransform, Transform

from flowcg.flows.couplings import coupling_layer
from flowcg.flows.mixing import LUMixing
from flowcg.flows.model import StructuredFlow
from flowcg.latent import ConditionalDiagonalGaussian, DiagonalGaussianMixture, StandardNormal, StructuredLatent

FAST_DENSITIES = {"conditional": ConditionalDiagonalGaussian, "standard": StandardNormal}


def build_flow(
    dim: int,
    slow_dim: int,
    n_components: int = 2,
    fast: str = "conditional",
    fast_hidden: int = 64,
    coupling: str = "spline",
    n_couplings: int = 4,
    hidden: int = 64,
    n_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    mixing: bool = True,
    prior_init_spread: float = 1.0,
    prior_init_std: float = 1.0,
    seed: int = 0,
    coordinates: Transform | None = None,
) -> StructuredFlow:
    """A structured-latent flow on a ``dim``-dimensional flow space.

    Args:
        dim: flow-space dimension (latent dim = dim; the coordinate map, if any, starts there).
        slow_dim: number of slow latent variables (the CVs), 1 ≤ slow_dim ≤ dim.
        n_components: components K of the slow mixture prior (1 = a single Gaussian).
        fast: ``"conditional"`` (Gaussian with MLP mean / log-scale of z_slow) or ``"standard"``.
        coupling: ``"spline"`` or ``"affine"`` coupling layers; ``n_couplings`` of them.
        mixing: put an LU-parameterised linear map first (mixes slow and fast latents).
        prior_init_spread, prior_init_std: initial spread of the mixture means and their σ.
        coordinates: fixed flow-space → configuration-space transform (None = identity).
    """
    if not 1 <= slow_dim <= dim:
        raise ValueError(f"slow_dim must lie in [1, {dim}], got {slow_dim}")
    if fast not in FAST_DENSITIES:
        raise ValueError(f"unknown fast density '{fast}'; choose one of {', '.join(FAST_DENSITIES)}")
    fast_dim = dim - slow_dim
    fast_kwargs = {"hidden": fast_hidden} if fast == "conditional" else {}
    latent = StructuredLatent(
        DiagonalGaussianMixture(slow_dim, n_components, init_spread=prior_init_spread, init_std=prior_init_std, seed=seed),
        FAST_DENSITIES[fast](slow_dim, fast_dim, **fast_kwargs),
    )
    layers: list[Transform] = [LUMixing(dim)] if mixing else []
    layers += [
        coupling_layer(coupling, dim, parity=i % 2, hidden=hidden, n_blocks=n_blocks, num_bins=num_bins, tail_bound=tail_bound)
        for i in range(n_couplings)
    ]
    if not layers:
        raise ValueError("the bijection needs at least one layer: set mixing=true or n_couplings ≥ 1")
    return StructuredFlow(latent, CompositeTransform(layers), coordinates)
