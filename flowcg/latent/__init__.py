"""Latent distributions: a mixture prior for the slow CVs, conditional Gaussians for the fast variables."""

from flowcg.latent.conditional import ConditionalDiagonalGaussian, StandardNormal
from flowcg.latent.mixture import DiagonalGaussianMixture
from flowcg.latent.product import BlockMixture
from flowcg.latent.structured import StructuredLatent

__all__ = ["BlockMixture", "ConditionalDiagonalGaussian", "DiagonalGaussianMixture", "StandardNormal", "StructuredLatent"]
