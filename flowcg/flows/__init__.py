"""Flows: the learnable bijection (LU mixing + nflows couplings) and the structured flow model."""

from flowcg.flows.build import build_flow
from flowcg.flows.model import FlowSample, StructuredFlow

__all__ = ["FlowSample", "StructuredFlow", "build_flow"]
