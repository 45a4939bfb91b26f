"""A molecule from a serialized OpenMM System (``system_xml``) + a PDB/mmCIF: the same target as the
directly built one, and one-line refusals of inputs that do not fit."""

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.targets import TargetInputError, load_target
from flowcg.targets.systems import ALDP_DIR, load_system_from_files

PDB = ALDP_DIR / "alanine-dipeptide.pdb"
PRMTOP = ALDP_DIR / "alanine-dipeptide.prmtop"


def _aldp_implicit():
    """ff96 + OBC1 from the shipped prmtop, positions from the shipped PDB (same atom order)."""
    return load_system_from_files(PRMTOP, coordinates=PDB, implicit_solvent="OBC1")


def _write_xml(system: openmm.System, path):
    path.write_text(openmm.XmlSerializer.serialize(system))
    return path


@pytest.fixture(scope="module")
def system_xml(tmp_path_factory):
    return _write_xml(_aldp_implicit().system, tmp_path_factory.mktemp("xml") / "system.xml")


@pytest.mark.parametrize("structure", ["pdb", "cif"])
def test_round_trip_gives_the_directly_built_energies(system_xml, tmp_path, structure):
    path = PDB
    if structure == "cif":  # the same structure as PDBx/mmCIF
        pdb = app.PDBFile(str(PDB))
        path = tmp_path / "aldp.cif"
        with path.open("w") as handle:
            app.PDBxFile.writeFile(pdb.topology, pdb.positions, handle)
    loaded = load_target("molecule", path=str(path), system_xml=str(system_xml), dtype="float64")
    direct = load_target("molecule", path=str(PRMTOP), coordinates=str(PDB), implicit_solvent="OBC1", dtype="float64")
    assert loaded.name == path.stem and loaded.topology.n_atoms == 22 and loaded.topology.n_bonds == 21
    x = torch.as_tensor(direct.positions[None] + 0.005 * np.random.default_rng(0).standard_normal((4, 22, 3)))
    torch.testing.assert_close(loaded.energy(x), direct.energy(x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(loaded.forces(x), direct.forces(x), rtol=1e-12, atol=1e-9)


def _one_line_error(match: str, **options) -> str:
    with pytest.raises(TargetInputError, match=match) as info:
        load_target("molecule", **options)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_atom_count_mismatch(system_xml, tmp_path):
    short = tmp_path / "short.pdb"
    short.write_text("".join(line for line in PDB.read_text().splitlines(keepends=True) if " 3HH3 NME" not in line))
    _one_line_error("short.pdb \\+ system.xml: the coordinates hold 21 atoms but the system has 22 particles",
                    path=str(short), system_xml=str(system_xml))


def test_unreadable_or_foreign_xml(tmp_path):
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("<System><Particles><Particle mass=")
    _one_line_error("garbage.xml: not an OpenMM System XML", path=str(PDB), system_xml=str(garbage))
    integrator = _write_xml(openmm.VerletIntegrator(0.001), tmp_path / "integrator.xml")
    _one_line_error("integrator.xml: holds an OpenMM VerletIntegrator, not a System", path=str(PDB), system_xml=str(integrator))
    _one_line_error("no such file", path=str(PDB), system_xml=str(tmp_path / "missing.xml"))


def test_unsamplable_or_unsupported_systems(tmp_path):
    constrained = _aldp_implicit().system
    constrained.addConstraint(0, 2, 0.18)  # two methyl hydrogens: not a bond, so not a coordinate that can be fixed
    _one_line_error(r"1 of the system.s 1 constraints join unbonded atoms \(atoms 0 and 2 first\)",
                    path=str(PDB), system_xml=str(_write_xml(constrained, tmp_path / "c.xml")))
    restrained = _aldp_implicit().system
    restrained.addForce(openmm.CustomExternalForce("x^2"))
    _one_line_error("does not implement CustomExternalForce; use backend='openmm'",
                    path=str(PDB), system_xml=str(_write_xml(restrained, tmp_path / "r.xml")))


def test_options_that_a_system_xml_makes_meaningless(system_xml):
    _one_line_error("leave forcefield, implicit_solvent unset", path=str(PDB), system_xml=str(system_xml),
                    forcefield=["amber14-all.xml"], implicit_solvent="implicit/obc2.xml")
    _one_line_error("with system_xml, path must be a structure file", path=str(PRMTOP), system_xml=str(system_xml))


def test_two_molecules_load_but_the_internal_flow_refuses_them(tmp_path):
    """A system of two molecules is a valid target; the internal-coordinate flow (one bond graph) refuses it."""
    pdb = app.PDBFile(str(PDB))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.add(pdb.topology, (pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer) + [1.5, 0.0, 0.0]) * unit.nanometer)
    system = app.ForceField("amber14-all.xml").createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    two = tmp_path / "two.pdb"
    with two.open("w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    target = load_target("molecule", path=str(two), system_xml=str(_write_xml(system, tmp_path / "two.xml")))
    assert target.event_shape == (44, 3)
    with pytest.raises(ValueError, match="bond graph is not connected"):
        InternalCoordinateTransform.from_topology(target.topology)
