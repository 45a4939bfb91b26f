"""Coordinate systems for molecules: internal coordinates (Z-matrix) and chirality checks."""

from flowcg.coordinates.chirality import CAChirality
from flowcg.coordinates.internal import InternalCoordinateTransform, canonicalize, zmatrix_from_topology

__all__ = ["CAChirality", "InternalCoordinateTransform", "canonicalize", "zmatrix_from_topology"]
