"""Build a :class:`StructuredFlow` from plain options (what ``conf/model/*.yaml`` holds).

* :func:`build_flow`: a flow on R^d (vector targets), LU mixing then couplings.
* :func:`build_internal_flow`: a flow on a molecule's internal coordinates, with circular
  layers for the rotor torsions, ending in Cartesian coordinates.
"""

from __future__ import annotations

import math

import torch
from nflows.transforms import CompositeTransform, Permutation, Transform

from flowcg.coordinates.harmonic import HarmonicReference, HarmonicStandardization
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.errors import ConfigError
from flowcg.flows.circular import CircleEmbedding
from flowcg.flows.couplings import MixedSplineCoupling, coupling_layer
from flowcg.flows.mixing import LUMixing
from flowcg.flows.model import StructuredFlow
from flowcg.coordinates.slow_torsions import coupled_torsion_blocks
from flowcg.latent import BlockMixture, ConditionalDiagonalGaussian, DiagonalGaussianMixture, StandardNormal, StructuredLatent

FAST_DENSITIES = {"conditional": ConditionalDiagonalGaussian, "standard": StandardNormal}


def structured_latent(dim: int, slow_dim: int, n_components: int, fast: str, fast_hidden: int,
                      prior_init_spread: float, prior_init_std: float, seed: int, periodic_slow: bool = False,
                      slow_blocks: list[list[int]] | None = None, cauchy_mask: torch.Tensor | None = None,
                      cauchy_weight: float = 1.0) -> StructuredLatent:
    """Mixture prior on the first ``slow_dim`` latents (wrapped normals if ``periodic_slow``), a
    ``fast`` density on the rest. ``slow_blocks`` (a partition of the slow latents into two or
    more blocks) makes the prior a product of one mixture per block (:class:`BlockMixture`).
    ``cauchy_mask`` (dim − slow_dim,) marks fast latents drawn from the defensive mixture with a Cauchy of
    weight ``cauchy_weight`` (flowcg.latent.conditional)."""
    if not 1 <= slow_dim <= dim:
        raise ConfigError(f"slow_dim must lie in [1, {dim}], got {slow_dim}")
    if fast not in FAST_DENSITIES:
        raise ConfigError(f"unknown fast density '{fast}'; choose one of {', '.join(FAST_DENSITIES)}")
    fast_kwargs = {"hidden": fast_hidden, "periodic_slow": periodic_slow} if fast == "conditional" else {}
    fast_kwargs.update(cauchy_mask=cauchy_mask, cauchy_weight=cauchy_weight)
    mixture_options = dict(n_components=n_components, init_spread=prior_init_spread, init_std=prior_init_std, seed=seed, periodic=periodic_slow)
    slow = (BlockMixture(slow_blocks, **mixture_options) if slow_blocks and len(slow_blocks) > 1
            else DiagonalGaussianMixture(slow_dim, **mixture_options))
    return StructuredLatent(
        slow,
        FAST_DENSITIES[fast](slow_dim, dim - slow_dim, **fast_kwargs),
    )


SLOW_PRIORS = ("gaussian", "wrapped")
#: joint: one mixture over all slow latents | bonded: one per group of slow torsions whose rotation axes share an atom
SLOW_BLOCKS = ("joint", "bonded")


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
    latent = structured_latent(dim, slow_dim, n_components, fast, fast_hidden, prior_init_spread, prior_init_std, seed)
    layers: list[Transform] = [LUMixing(dim)] if mixing else []
    layers += [
        coupling_layer(coupling, dim, parity=i % 2, hidden=hidden, n_blocks=n_blocks, num_bins=num_bins, tail_bound=tail_bound)
        for i in range(n_couplings)
    ]
    if not layers:
        raise ConfigError("the bijection needs at least one layer: set mixing=true or n_couplings ≥ 1")
    return StructuredFlow(latent, CompositeTransform(layers), coordinates)


def slow_coordinate_indices(transform: InternalCoordinateTransform, rotor_mask: torch.Tensor, slow_dim: int, slow_coordinates) -> list[int]:
    """Internal coordinates that receive the slow latents.

    ``"backbone"``: every residue's φ and ψ first (φ₁, ψ₁, φ₂, …: a dipeptide's φ, ψ; a peptide of
    R residues with ``slow_dim = 2R`` puts a slow latent on each), then the other rotor torsions in
    Z-matrix order; or an explicit list of coordinate indices. (``"auto"``, the torsions the force
    field says are softest, needs the force field: :func:`flowcg.builders.build_internal_model`
    resolves it into such a list.)
    """
    if slow_coordinates == "auto":
        raise ConfigError("slow_coordinates 'auto' needs the force field: build the model with flowcg.builders.build_internal_model")
    if slow_coordinates == "backbone":
        backbone = list(transform.backbone_indices)
        rotors = backbone + [i for i in rotor_mask.nonzero().ravel().tolist() if i not in backbone]
        indices = rotors[:slow_dim]
    else:
        indices = [int(i) for i in slow_coordinates]
    if len(indices) != slow_dim or len(set(indices)) != slow_dim or not all(0 <= i < transform.dim for i in indices):
        raise ConfigError(f"slow_coordinates must name {slow_dim} distinct coordinates in [0, {transform.dim}), got {indices}")
    return indices


def build_internal_flow(
    transform: InternalCoordinateTransform,
    reference: HarmonicReference,
    slow_dim: int = 2,
    slow_coordinates="backbone",
    slow_prior: str = "wrapped",
    slow_blocks: str = "joint",
    transform_slow: bool = False,
    n_components: int = 6,
    fast: str = "conditional",
    fast_hidden: int = 64,
    n_couplings: int = 8,
    hidden: int = 128,
    n_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 8.0,
    rotor_cauchy_weight: float = 0.0,
    prior_init_spread: float = math.pi,
    prior_init_std: float = 0.5,
    seed: int = 0,
) -> StructuredFlow:
    """A structured-latent flow whose samples are Cartesian frames (B, N, 3) in nm.

    latent → flow space: a fixed permutation puts the slow latents on ``slow_coordinates``;
    :class:`CircleEmbedding` maps rotor torsions onto the circle (all but the slow ones when
    ``slow_prior`` is ``"wrapped"``: then the slow prior is a mixture of wrapped normals, an
    angle already, and the slow marginal has no seam); ``slow_blocks="bonded"`` splits that prior
    into one mixture per group of slow torsions with a shared rotation-axis atom
    (:func:`~flowcg.coordinates.slow_torsions.coupled_torsion_blocks`); ``n_couplings``
    :class:`MixedSplineCoupling` layers (random halves, each followed by its complement) act on
    lines and circles, the slow coordinates only conditioning them unless ``transform_slow``; :class:`HarmonicStandardization` scales the stiff coordinates to internal
    coordinates; the internal-coordinate map places the atoms. The line splines act on
    [−``tail_bound``, ``tail_bound``] harmonic widths and are the identity outside; 8, not 5,
    because at 5 the largest importance weights of alanine dipeptide sat at the bound (stiff amide
    impropers whose force-field tails are heavier than Gaussian; ``data_free_benchmarks/RESULTS.md``).
    ``rotor_cauchy_weight`` ε > 0 draws the fast latents of the circle-embedded rotors from
    (1 − ε) Gaussian + ε Cauchy (the Cauchy's image, the wrapped Cauchy, is positive on the whole
    circle) instead of a Gaussian alone, whose density vanishes at the seam (:mod:`flowcg.latent.conditional`).
    """
    dim = transform.dim
    rotor_mask = transform.rotor_mask.cpu()
    slow = slow_coordinate_indices(transform, rotor_mask, slow_dim, slow_coordinates)
    if slow_prior not in SLOW_PRIORS:
        raise ConfigError(f"unknown slow_prior '{slow_prior}'; choose one of {', '.join(SLOW_PRIORS)}")
    if slow_blocks not in SLOW_BLOCKS:
        raise ConfigError(f"unknown slow_blocks '{slow_blocks}'; choose one of {', '.join(SLOW_BLOCKS)}")
    wrapped = slow_prior == "wrapped"
    if wrapped and not all(rotor_mask[i] for i in slow):
        raise ConfigError("slow_prior 'wrapped' needs every slow coordinate to be a rotor torsion")
    if not 0.0 <= rotor_cauchy_weight <= 1.0:
        raise ConfigError(f"rotor_cauchy_weight must be in [0, 1], got {rotor_cauchy_weight}")
    blocks = coupled_torsion_blocks(transform, slow) if slow_blocks == "bonded" else None
    # latent order [slow | fast] -> flow order: slow latents land on their coordinates
    flow_order = slow + [i for i in range(dim) if i not in slow]
    latent_of_coordinate = torch.empty(dim, dtype=torch.long)
    latent_of_coordinate[torch.tensor(flow_order)] = torch.arange(dim)
    # wrapped slow latents are angles already; every other rotor latent is mapped onto the circle
    embedded = rotor_mask & ~torch.isin(torch.arange(dim), torch.tensor(slow)) if wrapped else rotor_mask
    embedded_latents = torch.zeros(dim, dtype=torch.bool)
    embedded_latents[latent_of_coordinate[embedded]] = True
    latent = structured_latent(dim, slow_dim, n_components, fast, fast_hidden, prior_init_spread, prior_init_std, seed,
                               periodic_slow=wrapped, slow_blocks=blocks, cauchy_mask=embedded_latents[slow_dim:],
                               cauchy_weight=rotor_cauchy_weight)
    generator = torch.Generator().manual_seed(seed)
    layers: list[Transform] = [Permutation(latent_of_coordinate), CircleEmbedding(embedded)]
    # The slow coordinates condition every coupling but, unless transform_slow, are never
    # transformed: their marginal is then the mixture prior's (through the fixed circle map), so
    # each mixture component owns a basin and stratified sampling keeps small basins trained.
    # (When couplings could move them, reverse KL folded the alpha_L component into the
    # extended basin within 300 steps at 1200 K.)
    movable = torch.tensor([transform_slow or i not in slow for i in range(dim)])
    for i in range(n_couplings):
        if i % 2 == 0:
            order = movable.nonzero().ravel()[torch.randperm(int(movable.sum()), generator=generator)]
            half = torch.zeros(dim, dtype=torch.bool)
            half[order[: len(order) // 2]] = True
        layers.append(MixedSplineCoupling(half if i % 2 == 0 else movable & ~half, rotor_mask, hidden, n_blocks, num_bins, tail_bound))
    layers.append(HarmonicStandardization(reference))
    return StructuredFlow(latent, CompositeTransform(layers), coordinates=transform)
