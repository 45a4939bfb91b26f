"""Coarse-grained models: slice mapping, SchNet potential, Boltzmann-inverted prior (their MD: :mod:`flowcg.md.langevin`)."""

from flowcg.cg.mapping import ALDP_BACKBONE_SELECTION, CGMapping
from flowcg.cg.prior import CGPrior, FourierDihedralPairs, FourierDihedrals, HarmonicAngles, HarmonicBonds, Repulsion, fit_prior
from flowcg.cg.schnet import CGSchNet

__all__ = [
    "ALDP_BACKBONE_SELECTION",
    "CGMapping",
    "CGPrior",
    "CGSchNet",
    "FourierDihedralPairs",
    "FourierDihedrals",
    "HarmonicAngles",
    "HarmonicBonds",
    "Repulsion",
    "fit_prior",
]
