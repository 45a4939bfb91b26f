"""Shared fixtures of the CG tests: the alanine-dipeptide topology and its two CG mappings."""

import pytest

from flowcg.cg.mapping import CGMapping
from flowcg.targets.systems import load_system


@pytest.fixture(scope="session")
def aldp_topology():
    """mdtraj topology of alanine dipeptide (22 atoms)."""
    return load_system("aldp_vacuum").topology


@pytest.fixture(scope="session")
def backbone(aldp_topology):
    return CGMapping.aldp_backbone(aldp_topology)
