"""Molecular systems: OpenMM ``System`` + topology + reference positions, from files or presets.

A :class:`MolecularSystem` is everything a molecular target needs from the outside world. It is
built by OpenMM's own readers (``AmberPrmtopFile``, ``PDBFile``/``PDBxFile``, ``ForceField``) with
``rigidWater=False`` and ``NoCutoff`` (a finite molecule), and without constraints unless asked:
``constraints="hbonds"`` fixes every X–H bond length (OpenMM's ``HBonds``; the published peptide
targets are defined so). A constrained bond is not a degree of freedom: the internal-coordinate
map leaves it out at its constraint length (:class:`~flowcg.coordinates.InternalCoordinateTransform`),
so only constraints on bonded pairs are accepted (:attr:`MolecularSystem.constraints`). A ``System``
serialized elsewhere (``openmm.XmlSerializer``, as openmmtools and openmmforcefields produce) is
taken as it is and refused if it breaks these rules (constraints between unbonded atoms, periodic
boundaries, virtual sites).

Bad user input (missing, unreadable or inconsistent files) raises
:class:`~flowcg.targets.base.TargetInputError` with a one-line message naming the file.

Units: positions in nm, temperature in kelvin, energies (inside the ``System``) in kJ/mol.

Presets (the bundled files are openmmtools' ``alanine-dipeptide-gbsa``, see ``data/PROVENANCE.md``):

``aldp_implicit``
    AMBER ff96 + OBC1 GB/SA from the prmtop, identical to
    ``openmmtools.testsystems.AlanineDipeptideImplicit(constraints=None)`` (the FAB / TA-BG target).
``aldp_vacuum``
    the same prmtop without solvent.
``aldp_amber14``
    the bundled PDB with ``amber14-all.xml`` + ``implicit/obc2.xml``.
``ala4_implicit``, ``ala6_implicit``
    Ace-(Ala)3-Nme (42 atoms) and Ace-(Ala)5-Nme (62 atoms), the published tetra- and hexapeptide
    targets (TA-BG, CMT; ``data/peptides/PROVENANCE.md``): ``amber99sbildn.xml`` + ``amber99_obc.xml``
    (a ``GBSAOBCForce``), ``constraints="hbonds"`` (22 and 32 X–H bonds fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import mdtraj
import numpy as np
import openmm
from openmm import app, unit

from flowcg.targets.base import TargetInputError

DATA_DIR = Path(__file__).parent / "data"
ALDP_DIR = DATA_DIR / "alanine-dipeptide-gbsa"
PEPTIDE_DIR = DATA_DIR / "peptides"

#: Constraint options by name (OpenMM's ``constraints`` argument of ``createSystem``).
CONSTRAINTS = {"none": None, "hbonds": app.HBonds}

#: Generalised-Born models that ``AmberPrmtopFile.createSystem`` accepts, by name.
AMBER_IMPLICIT_SOLVENTS = {"HCT": app.HCT, "OBC1": app.OBC1, "OBC2": app.OBC2, "GBn": app.GBn, "GBn2": app.GBn2}

_AMBER_SUFFIXES = (".prmtop", ".parm7", ".top")
#: Structure files (topology + positions) by suffix: OpenMM's reader and the format's name.
_STRUCTURE_READERS = {
    ".pdb": (app.PDBFile, "PDB"),
    ".cif": (app.PDBxFile, "PDBx/mmCIF"),
    ".mmcif": (app.PDBxFile, "PDBx/mmCIF"),
    ".pdbx": (app.PDBxFile, "PDBx/mmCIF"),
}


@dataclass
class MolecularSystem:
    """An OpenMM system with its topology and reference positions.

    Attributes:
        system: the ``openmm.System`` (kJ/mol, nm; no cutoff; constraints only on bonds).
        omm_topology: the ``openmm.app.Topology`` it was built from.
        topology: the same topology as an ``mdtraj.Topology`` (for analysis code).
        positions: reference positions, ``(n_atoms, 3)`` float64 in nm.
        temperature: temperature in kelvin.
        name: a short label (preset name or file stem).
    """

    system: openmm.System
    omm_topology: app.Topology
    topology: mdtraj.Topology
    positions: np.ndarray
    temperature: float
    name: str

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    @property
    def constraints(self) -> tuple[tuple[int, int, float], ...]:
        """The system's distance constraints as (atom i, atom j, length in nm); empty if none."""
        return _constraints(self.system)


def _constraints(system: openmm.System) -> tuple[tuple[int, int, float], ...]:
    out = []
    for k in range(system.getNumConstraints()):
        i, j, length = system.getConstraintParameters(k)
        out.append((int(i), int(j), float(length.value_in_unit(unit.nanometer))))
    return tuple(out)


def _constraint_option(constraints: str | None, origin: str):
    """OpenMM's ``constraints`` argument for the option ``constraints`` (none | hbonds)."""
    key = "none" if constraints is None else str(constraints).lower()
    if key not in CONSTRAINTS:
        raise TargetInputError(f"{origin}: unknown constraints '{constraints}'; choose one of {', '.join(CONSTRAINTS)}")
    return CONSTRAINTS[key]


def _positions_nm(positions) -> np.ndarray:
    return np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float64).reshape(-1, 3)


def _one_line(error: Exception) -> str:
    """An exception's message squeezed onto one line (its type name if it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def _read_structure(path: Path) -> tuple[app.Topology, np.ndarray]:
    """Topology and positions (n_atoms, 3) in nm of a PDB or PDBx/mmCIF file.

    Raises:
        TargetInputError: the file is missing, has another suffix, cannot be parsed, or holds no atoms.
    """
    if path.suffix.lower() not in _STRUCTURE_READERS:
        raise TargetInputError(f"{path.name}: expected a structure file ({', '.join(_STRUCTURE_READERS)})")
    if not path.is_file():
        raise TargetInputError(f"no such file: {path}")
    reader, kind = _STRUCTURE_READERS[path.suffix.lower()]
    try:  # OpenMM's readers fail on a malformed file with IndexError, KeyError, ValueError, ...
        structure = reader(str(path))
        positions = _positions_nm(structure.getPositions(asNumpy=True))
    except Exception as error:
        raise TargetInputError(f"{path.name}: not a readable {kind} file ({_one_line(error)})") from None
    if structure.topology.getNumAtoms() == 0:
        raise TargetInputError(f"{path.name}: holds no atoms")
    return structure.topology, positions


def _read_coordinates(path: Path) -> np.ndarray:
    """Positions (nm) from a structure file (PDB, mmCIF) or an Amber coordinate file (crd/inpcrd/rst7)."""
    if path.suffix.lower() in _STRUCTURE_READERS:
        return _read_structure(path)[1]
    if not path.is_file():
        raise TargetInputError(f"no such file: {path}")
    try:
        return _positions_nm(app.AmberInpcrdFile(str(path)).getPositions(asNumpy=True))
    except Exception as error:
        raise TargetInputError(f"{path.name}: not a readable Amber coordinate file ({_one_line(error)})") from None


def _read_system_xml(path: Path) -> openmm.System:
    """The ``openmm.System`` serialized in ``path`` (``openmm.XmlSerializer`` format).

    Raises:
        TargetInputError: the file is missing, is not XML OpenMM can read, or holds another object
            (an integrator, a state).
    """
    if not path.is_file():
        raise TargetInputError(f"no such file: {path}")
    try:
        system = openmm.XmlSerializer.deserialize(path.read_text())
    except Exception as error:  # ValueError ("Invalid input string") for garbage, UnicodeDecodeError for binary
        raise TargetInputError(f"{path.name}: not an OpenMM System XML ({_one_line(error)})") from None
    if not isinstance(system, openmm.System):
        raise TargetInputError(f"{path.name}: holds an OpenMM {type(system).__name__}, not a System")
    return system


def _from_prmtop(
    prmtop_path: Path, coordinates_path: Path, implicit_solvent: str | None, temperature: float, name: str,
    constraints: str | None = None,
) -> MolecularSystem:
    if implicit_solvent is not None and implicit_solvent not in AMBER_IMPLICIT_SOLVENTS:
        raise TargetInputError(
            f"unknown implicit solvent '{implicit_solvent}' for an Amber prmtop; "
            f"choose one of {', '.join(AMBER_IMPLICIT_SOLVENTS)} or None"
        )
    try:
        prmtop = app.AmberPrmtopFile(str(prmtop_path))
    except Exception as error:  # OpenMM's reader fails on a malformed file with assorted exception types
        raise TargetInputError(f"{prmtop_path.name}: not a readable Amber topology ({_one_line(error)})") from None
    # Same arguments as openmmtools' AlanineDipeptideImplicit, with constraints off unless asked.
    system = prmtop.createSystem(
        implicitSolvent=AMBER_IMPLICIT_SOLVENTS.get(implicit_solvent) if implicit_solvent else None,
        constraints=_constraint_option(constraints, prmtop_path.name),
        rigidWater=False,
        nonbondedCutoff=None,
        nonbondedMethod=app.NoCutoff,
    )
    return _assemble(system, prmtop.topology, _read_coordinates(coordinates_path), temperature, name)


def _from_forcefield_files(
    structure_path: Path, forcefield: Sequence[str], implicit_solvent: str | None, temperature: float, name: str,
    constraints: str | None = None,
) -> MolecularSystem:
    """A PDB/mmCIF structure parameterised by OpenMM ``ForceField`` XML files (+ an implicit-solvent XML)."""
    if not forcefield:
        raise TargetInputError(
            f"{structure_path.name}: a structure file needs force-field XML files (forcefield=[...]) or a serialized system (system_xml=...)"
        )
    xml_files = [*forcefield, *([implicit_solvent] if implicit_solvent else [])]
    try:
        ff = app.ForceField(*xml_files)
    except Exception as error:  # a missing or malformed force-field file
        raise TargetInputError(f"cannot read force field {' + '.join(xml_files)} ({_one_line(error)})") from None
    topology, positions = _read_structure(structure_path)
    try:
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=_constraint_option(constraints, structure_path.name),
                                 rigidWater=False)
    except ValueError:
        # OpenMM's message is a multi-line essay; name the offending residue(s) in one line instead.
        unmatched = ff.getUnmatchedResidues(topology)
        if not unmatched:
            raise
        residues = ", ".join(f"{r.name}{r.id} (chain {r.chain.id})" for r in unmatched)
        raise TargetInputError(
            f"{structure_path.name}: force field {' + '.join(xml_files)} has no template for residue(s) {residues}"
        ) from None
    return _assemble(system, topology, positions, temperature, name)


def _from_system_xml(xml_path: Path, structure_path: Path, temperature: float, name: str) -> MolecularSystem:
    """A serialized ``System`` with the topology and positions of a PDB/mmCIF file of the same atoms, in order."""
    system = _read_system_xml(xml_path)
    topology, positions = _read_structure(structure_path)
    return _assemble(system, topology, positions, temperature, name, origin=f"{structure_path.name} + {xml_path.name}")


def _check_samplable(system: openmm.System, omm_topology: app.Topology, origin: str) -> None:
    """Refuse a system flowcg cannot sample as it is described: a constrained distance that is not a
    bond (a rigid water, an angle constraint: not a coordinate the internal-coordinate map can fix),
    periodic boundaries (a solvated box), virtual sites."""
    bonds = {frozenset((a.index, b.index)) for a, b in omm_topology.bonds()}
    unbonded = [(i, j) for i, j, _ in _constraints(system) if frozenset((i, j)) not in bonds]
    if unbonded:
        raise TargetInputError(
            f"{origin}: {len(unbonded)} of the system's {system.getNumConstraints()} constraints join unbonded atoms "
            f"(atoms {unbonded[0][0]} and {unbonded[0][1]} first); flowcg can fix bond lengths only (constraints=hbonds or none)"
        )
    if system.usesPeriodicBoundaryConditions():
        raise TargetInputError(
            f"{origin}: the system uses periodic boundary conditions; flowcg samples a finite molecule "
            "(vacuum or implicit solvent, nonbondedMethod=NoCutoff)"
        )
    virtual = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
    if virtual:
        raise TargetInputError(f"{origin}: the system has {len(virtual)} virtual sites (particle {virtual[0]} first), which flowcg cannot sample")


def _assemble(
    system: openmm.System,
    omm_topology: app.Topology,
    positions: np.ndarray,
    temperature: float,
    name: str,
    origin: str | None = None,
) -> MolecularSystem:
    """Check that system, topology and positions (nm) fit together and that the system can be sampled
    (``origin`` names the input files in the messages; default ``name``)."""
    origin = origin or name
    if positions.shape != (system.getNumParticles(), 3):
        raise TargetInputError(
            f"{origin}: the coordinates hold {positions.shape[0]} atoms but the system has {system.getNumParticles()} particles"
        )
    _check_samplable(system, omm_topology, origin)
    return MolecularSystem(
        system=system,
        omm_topology=omm_topology,
        topology=mdtraj.Topology.from_openmm(omm_topology),
        positions=positions,
        temperature=float(temperature),
        name=name,
    )


def load_system_from_files(
    path: str | Path,
    *,
    coordinates: str | Path | None = None,
    forcefield: Sequence[str] = (),
    implicit_solvent: str | None = None,
    system_xml: str | Path | None = None,
    constraints: str | None = None,
    temperature: float = 300.0,
    name: str | None = None,
) -> MolecularSystem:
    """Build a :class:`MolecularSystem` (temperature in K) from user files.

    Three routes, chosen by the suffix of ``path`` and by ``system_xml``:

    * Amber topology (``.prmtop``/``.parm7``/``.top``): ``coordinates`` (crd/inpcrd/rst7, pdb or
      cif) is required; ``implicit_solvent`` is a GB model name (``HCT``, ``OBC1``, ``OBC2``,
      ``GBn``, ``GBn2``) or ``None`` for vacuum.
    * structure (``.pdb``, or PDBx/mmCIF ``.cif``/``.mmcif``/``.pdbx``) + ``forcefield``: OpenMM
      force-field XML names (e.g. ``["amber14-all.xml"]``); ``implicit_solvent`` is an optional
      implicit-solvent XML (e.g. ``"implicit/obc2.xml"``).
    * structure + ``system_xml``: an ``openmm.System`` serialized with ``openmm.XmlSerializer``
      (openmmtools, openmmforcefields), its particles in the order of the structure's atoms, without
      constraints, periodic boundaries or virtual sites; it already holds the force field and any
      implicit solvent, so ``forcefield``, ``implicit_solvent`` and ``coordinates`` must be left unset.

    ``constraints`` (``none`` | ``hbonds``) applies to the first two routes; a serialized system
    brings its own (bond constraints only).

    Raises:
        TargetInputError: (a ``ValueError``) for a missing, unreadable or inconsistent input (atom
            counts that differ, a residue the force field cannot parameterise, ...), in one line
            naming the file.
    """
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise TargetInputError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if system_xml is not None:
        given = [k for k, v in (("forcefield", forcefield), ("implicit_solvent", implicit_solvent), ("coordinates", coordinates),
                                ("constraints", constraints not in (None, "none"))) if v]
        if given:
            raise TargetInputError(
                f"system_xml={Path(system_xml).name} already defines the system and its positions come from {path.name}; "
                f"leave {', '.join(given)} unset"
            )
        if suffix not in _STRUCTURE_READERS:
            raise TargetInputError(f"{path.name}: with system_xml, path must be a structure file ({', '.join(_STRUCTURE_READERS)})")
        return _from_system_xml(Path(system_xml), path, temperature, name)
    if suffix in _AMBER_SUFFIXES:
        if coordinates is None:
            raise TargetInputError(f"{path.name}: an Amber topology needs coordinates=<crd/inpcrd/pdb file>")
        return _from_prmtop(path, Path(coordinates), implicit_solvent, temperature, name, constraints)
    if suffix in _STRUCTURE_READERS:
        return _from_forcefield_files(path, list(forcefield), implicit_solvent, temperature, name, constraints)
    raise TargetInputError(
        f"{path.name}: expected an Amber topology ({', '.join(_AMBER_SUFFIXES)}) or a structure file ({', '.join(_STRUCTURE_READERS)})"
    )


_ALDP_PRMTOP = ALDP_DIR / "alanine-dipeptide.prmtop"
_ALDP_CRD = ALDP_DIR / "alanine-dipeptide.crd"
_ALDP_PDB = ALDP_DIR / "alanine-dipeptide.pdb"

PRESETS: dict[str, Callable[[float], MolecularSystem]] = {
    "aldp_implicit": lambda t: _from_prmtop(_ALDP_PRMTOP, _ALDP_CRD, "OBC1", t, "aldp_implicit"),
    "aldp_vacuum": lambda t: _from_prmtop(_ALDP_PRMTOP, _ALDP_CRD, None, t, "aldp_vacuum"),
    "aldp_amber14": lambda t: _from_forcefield_files(
        _ALDP_PDB, ["amber14-all.xml"], "implicit/obc2.xml", t, "aldp_amber14"
    ),
    "ala4_implicit": lambda t: _from_forcefield_files(
        PEPTIDE_DIR / "AAA.pdb", ["amber99sbildn.xml"], "amber99_obc.xml", t, "ala4_implicit", constraints="hbonds"
    ),
    "ala6_implicit": lambda t: _from_forcefield_files(
        PEPTIDE_DIR / "AAAAA.pdb", ["amber99sbildn.xml"], "amber99_obc.xml", t, "ala6_implicit", constraints="hbonds"
    ),
}


def openmm_seed(seed: int) -> int:
    """The OpenMM random seed for config seed ``seed``: OpenMM reads 0 as "pick one at random", and
    seeds are int32, so seed + 1, folded into [1, 2³¹ − 1) (unchanged for every seed below 2³¹ − 2)."""
    return int(seed) % (2**31 - 2) + 1


def langevin_simulation(
    molecular_system: MolecularSystem,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    seed: int = 0,
    platform: str | openmm.Platform = "CPU",
    threads: int | None = None,
) -> tuple[openmm.Context, openmm.LangevinMiddleIntegrator]:
    """A seeded LangevinMiddleIntegrator at the system's temperature and its Context (no positions set).

    ``threads`` sets the CPU platform's thread count (None: OpenMM's default, all cores).
    """
    integrator = openmm.LangevinMiddleIntegrator(
        molecular_system.temperature * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(openmm_seed(seed))
    platform = openmm.Platform.getPlatformByName(platform) if isinstance(platform, str) else platform
    properties = {"Threads": str(threads)} if threads and platform.getName() == "CPU" else {}
    return openmm.Context(molecular_system.system, integrator, platform, properties), integrator


def thermalize(context: openmm.Context, molecular_system: MolecularSystem, seed: int = 0) -> None:
    """Reference positions, local energy minimisation, then velocities drawn at the system's temperature."""
    context.setPositions(molecular_system.positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(molecular_system.temperature * unit.kelvin, openmm_seed(seed))


def langevin_frames(
    molecular_system: MolecularSystem,
    n_frames: int,
    steps_per_frame: int = 50,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    seed: int = 0,
    platform: str = "CPU",
) -> np.ndarray:
    """Thermal configurations (n_frames, N, 3) in nm from a short seeded Langevin run.

    Starts from the reference positions after an energy minimisation, at the system's temperature,
    and keeps one frame every ``steps_per_frame`` steps. Meant for validation and benchmarks (a
    cloud of realistic configurations), not as an equilibrium reference. One CPU thread: the
    multi-threaded force sums change order between runs, and a seed must reproduce the frames bitwise.
    """
    context, integrator = langevin_simulation(molecular_system, timestep_fs, friction_per_ps, seed, platform, threads=1)
    thermalize(context, molecular_system, seed)
    frames = np.empty((n_frames, molecular_system.n_atoms, 3))
    for k in range(n_frames):
        integrator.step(steps_per_frame)
        frames[k] = _positions_nm(context.getState(getPositions=True).getPositions(asNumpy=True))
    return frames


def load_system(preset: str, temperature: float = 300.0) -> MolecularSystem:
    """The :class:`MolecularSystem` of a named preset (see the module docstring) at ``temperature`` K."""
    if preset not in PRESETS:
        raise ValueError(f"unknown molecular system preset '{preset}'; known presets: {', '.join(PRESETS)}")
    return PRESETS[preset](temperature)
