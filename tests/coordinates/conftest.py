"""Shared fixtures: alanine dipeptide and a few frames of short vacuum MD; a rigid rotation about a bond."""

import math

import numpy as np
import pytest

from flowcg.targets.systems import langevin_frames, load_system


@pytest.fixture(scope="session")
def aldp():
    return load_system("aldp_vacuum")


@pytest.fixture(scope="session")
def md_frames(aldp):
    """Eight frames (8, 22, 3) nm, 50 fs apart, of 300 K Langevin MD in vacuum (seeded)."""
    return langevin_frames(aldp, n_frames=8, steps_per_frame=50, seed=7, platform="Reference")


def rotate_about_bond(x: np.ndarray, axis_from: int, axis_to: int, atoms: list[int], angle: float) -> np.ndarray:
    """x (N, 3) with ``atoms`` rotated by ``angle`` about the axis_from → axis_to bond (Rodrigues)."""
    x = x.copy()
    k = x[axis_to] - x[axis_from]
    k /= np.linalg.norm(k)
    v = x[atoms] - x[axis_to]
    x[atoms] = x[axis_to] + v * math.cos(angle) + np.cross(k, v) * math.sin(angle) + np.outer(v @ k, k) * (1 - math.cos(angle))
    return x
