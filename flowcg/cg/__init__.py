"""Coarse-grained models: slice mapping, SchNet potential, Boltzmann-inverted prior, Langevin sampler."""

from flowcg.cg.mapping import ALDP_BACKBONE_SELECTION, CGMapping
from flowcg.cg.prior import CGPrior, FourierDihedrals, HarmonicAngles, HarmonicBonds, Repulsion, fit_prior, kT
from flowcg.cg.schnet import CGSchNet
from flowcg.cg.simulate import LangevinBAOAB, LangevinResult

__all__ = [
    "ALDP_BACKBONE_SELECTION",
    "CGMapping",
    "CGPrior",
    "CGSchNet",
    "FourierDihedrals",
    "HarmonicAngles",
    "HarmonicBonds",
    "LangevinBAOAB",
    "LangevinResult",
    "Repulsion",
    "fit_prior",
    "kT",
]
