"""Shared fixtures: alanine dipeptide and a few frames of short vacuum MD."""

import pytest

from flowcg.targets.systems import langevin_frames, load_system


@pytest.fixture(scope="session")
def aldp():
    return load_system("aldp_vacuum")


@pytest.fixture(scope="session")
def md_frames(aldp):
    """Eight frames (8, 22, 3) nm, 50 fs apart, of 300 K Langevin MD in vacuum (seeded)."""
    return langevin_frames(aldp, n_frames=8, steps_per_frame=50, seed=7, platform="Reference")
