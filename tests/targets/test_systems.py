"""Molecular systems: presets, user files, clear errors, and the bundled data's provenance."""

import hashlib
import re

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import app

from flowcg.targets.systems import (
    ALDP_DIR,
    DATA_DIR,
    MolecularSystem,
    langevin_frames,
    load_system,
    load_system_from_files,
)

FORCES = {
    "aldp_implicit": {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "CustomGBForce", "CMMotionRemover"},
    "aldp_vacuum": {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "CMMotionRemover"},
    "aldp_amber14": {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "CustomGBForce", "CMMotionRemover"},
}


@pytest.mark.parametrize("preset", sorted(FORCES))
def test_presets(preset):
    """The alanine-dipeptide presets (the peptides: tests/targets/test_peptides.py)."""
    ms = load_system(preset, temperature=330.0)
    assert isinstance(ms, MolecularSystem) and ms.name == preset and ms.temperature == 330.0
    assert ms.positions.shape == (22, 3) and ms.positions.dtype == np.float64
    assert isinstance(ms.topology, mdtraj.Topology) and ms.topology.n_atoms == 22
    assert isinstance(ms.omm_topology, app.Topology)
    assert ms.system.getNumConstraints() == 0
    assert {type(f).__name__ for f in ms.system.getForces()} == FORCES[preset]
    for force in ms.system.getForces():
        if isinstance(force, (openmm.NonbondedForce, openmm.CustomGBForce)):
            assert force.getNonbondedMethod() == 0  # NoCutoff
    # phi/psi atoms of the field notes: C(ACE)-N-CA-C and N-CA-C-N(NME) at 4-6-8-14, 6-8-14-16
    names = [a.name for a in ms.topology.atoms]
    assert [names[i] for i in (4, 6, 8, 14, 16)] == ["C", "N", "CA", "C", "N"]


def test_aldp_implicit_is_openmmtools_system():
    """Same energy as the system openmmtools' AlanineDipeptideImplicit(constraints=None) builds."""
    prmtop = app.AmberPrmtopFile(str(ALDP_DIR / "alanine-dipeptide.prmtop"))
    reference = prmtop.createSystem(implicitSolvent=app.OBC1, constraints=None, nonbondedCutoff=None)
    ms = load_system("aldp_implicit")
    energies = []
    for system in (reference, ms.system):
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(ms.positions)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy()._value)
    assert energies[0] == energies[1]


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown molecular system preset 'aldp'; known presets: aldp_implicit"):
        load_system("aldp")


def test_bad_pdb_residue_names_it_in_one_line(tmp_path):
    pdb = tmp_path / "bad.pdb"
    pdb.write_text((ALDP_DIR / "alanine-dipeptide.pdb").read_text().replace("ALA", "XYZ"))
    with pytest.raises(ValueError) as info:
        load_system_from_files(pdb, forcefield=["amber14-all.xml"])
    message = str(info.value)
    assert "\n" not in message and "XYZ2" in message and "no template" in message


def test_user_files_routes():
    amber = load_system_from_files(
        ALDP_DIR / "alanine-dipeptide.prmtop", coordinates=ALDP_DIR / "alanine-dipeptide.pdb", implicit_solvent="OBC2"
    )
    assert amber.name == "alanine-dipeptide" and amber.positions.shape == (22, 3)
    with pytest.raises(ValueError, match="needs coordinates"):
        load_system_from_files(ALDP_DIR / "alanine-dipeptide.prmtop")
    with pytest.raises(ValueError, match="unknown implicit solvent 'OBC3'"):
        load_system_from_files(ALDP_DIR / "alanine-dipeptide.prmtop", coordinates=ALDP_DIR / "alanine-dipeptide.crd", implicit_solvent="OBC3")
    with pytest.raises(ValueError, match="needs force-field XML"):
        load_system_from_files(ALDP_DIR / "alanine-dipeptide.pdb")
    with pytest.raises(ValueError, match="no such file"):
        load_system_from_files(ALDP_DIR / "missing.pdb")


def test_langevin_frames_are_seeded_and_thermal():
    ms = load_system("aldp_vacuum")
    a = langevin_frames(ms, n_frames=3, steps_per_frame=20, seed=5)
    b = langevin_frames(ms, n_frames=3, steps_per_frame=20, seed=5)
    assert a.shape == (3, 22, 3) and np.array_equal(a, b)
    assert 0.0 < np.abs(a - ms.positions).max() < 0.5


def test_bundled_files_match_provenance():
    provenance = (DATA_DIR / "PROVENANCE.md").read_text()
    listed = dict(re.findall(r"`(alanine-dipeptide\.\w+)` \| `([0-9a-f]{64})`", provenance))
    assert set(listed) == {"alanine-dipeptide.prmtop", "alanine-dipeptide.crd", "alanine-dipeptide.pdb"}
    for name, digest in listed.items():
        assert hashlib.sha256((ALDP_DIR / name).read_bytes()).hexdigest() == digest
