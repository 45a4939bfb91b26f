"""Shared fixtures: alanine dipeptide and a few frames of short vacuum MD."""

import numpy as np
import openmm
import pytest
from openmm import unit

from flowcg.targets.systems import load_system


@pytest.fixture(scope="session")
def aldp():
    return load_system("aldp_vacuum")


@pytest.fixture(scope="session")
def md_frames(aldp):
    """Eight frames (8, 22, 3) nm, 50 fs apart, of 300 K Langevin MD in vacuum (seeded)."""
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    integrator.setRandomNumberSeed(7)
    context = openmm.Context(aldp.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(aldp.positions * unit.nanometer)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    frames = []
    for _ in range(8):
        integrator.step(50)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.asarray(frames)
