"""The published peptide targets (Ace-(Ala)3-Nme, Ace-(Ala)5-Nme; amber99sbildn + OBC, X–H bonds
constrained): built as defined, the torch force field equal to OpenMM in float64, and constraints
accepted only where the internal-coordinate map can fix them."""

import numpy as np
import openmm
import pytest
import torch
from openmm import app

from flowcg import load_target
from flowcg.builders import build_internal_model
from flowcg.targets.base import TargetInputError
from flowcg.targets.openmm_bridge import OpenMMEvaluator
from flowcg.targets.systems import PEPTIDE_DIR, langevin_frames, load_system, load_system_from_files

PEPTIDES = {"ala4_implicit": (42, 22), "ala6_implicit": (62, 32)}


@pytest.fixture(scope="module", params=sorted(PEPTIDES))
def peptide(request):
    return load_system(request.param)


def test_presets_are_the_published_targets(peptide):
    n_atoms, n_constraints = PEPTIDES[peptide.name]
    assert peptide.n_atoms == n_atoms and len(peptide.constraints) == n_constraints
    hydrogens = {a.index for a in peptide.topology.atoms if a.element.symbol == "H"}
    bonds = {frozenset((a.index, b.index)) for a, b in peptide.topology.bonds}
    assert all(len({i, j} & hydrogens) == 1 and frozenset((i, j)) in bonds for i, j, _ in peptide.constraints)
    assert len(hydrogens) == n_constraints  # every X–H bond, nothing else
    forces = {type(f).__name__ for f in peptide.system.getForces()}
    assert {"GBSAOBCForce", "NonbondedForce", "PeriodicTorsionForce", "CMMotionRemover"} <= forces


def test_torch_forcefield_matches_openmm_in_float64(peptide):
    """Thermal frames of constrained OpenMM MD and perturbed ones (constraints violated: U is defined
    everywhere), energies and forces against OpenMM's Reference platform to round-off."""
    frames = langevin_frames(peptide, n_frames=4, steps_per_frame=50, seed=3, platform="Reference")
    perturbed = frames[:2] + 0.005 * np.random.default_rng(4).standard_normal(frames[:2].shape)
    frames = np.concatenate([frames, perturbed])
    target = load_target(peptide.name, dtype="float64")
    x = torch.as_tensor(frames)
    energy, forces = target.energy_and_forces(x)
    ref_energy, ref_forces = OpenMMEvaluator(peptide.system, platform="Reference").evaluate(frames)
    np.testing.assert_allclose(energy.numpy(), ref_energy, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(forces.numpy(), ref_forces, rtol=1e-9, atol=1e-7)


def test_internal_model_leaves_the_constrained_bonds_out():
    target = load_target("ala4_implicit")
    model = build_internal_model(target, n_couplings=2, hidden=16, fast_hidden=8, seed=0)
    transform = model.coordinates
    assert transform.dim == 3 * 42 - 6 - 22 and transform.kind.count("bond") == 41 - 22
    torch.manual_seed(0)
    with torch.no_grad():
        draw = model.sample(64)
    i, j, lengths = (torch.tensor(c) for c in zip(*target.constraints))
    bond_lengths = torch.linalg.vector_norm(draw.x[:, i] - draw.x[:, j], dim=-1)
    torch.testing.assert_close(bond_lengths, lengths.float().expand_as(bond_lengths), rtol=0, atol=1e-6)
    assert torch.isfinite(target.energy(draw.x)).all() and torch.isfinite(draw.log_q).all()


def test_constraints_on_unbonded_atoms_are_refused(tmp_path):
    """A serialized system with an angle-type constraint (two atoms not bonded): one line, no traceback."""
    pdb = app.PDBFile(str(PEPTIDE_DIR / "AAA.pdb"))
    system = app.ForceField("amber99sbildn.xml", "amber99_obc.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                                                 constraints=app.HBonds)
    system.addConstraint(1, 2, 0.18)  # two hydrogens of the acetyl methyl
    xml = tmp_path / "system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(system))
    with pytest.raises(TargetInputError, match="constraints join unbonded atoms") as error:
        load_system_from_files(PEPTIDE_DIR / "AAA.pdb", system_xml=xml)
    assert "\n" not in str(error.value)


def test_unknown_constraints_option_is_named():
    with pytest.raises(TargetInputError, match="unknown constraints 'hangles'; choose one of none, hbonds"):
        load_system_from_files(PEPTIDE_DIR / "AAA.pdb", forcefield=["amber99sbildn.xml"], constraints="hangles")



def test_a_tiny_training_run_on_the_tetrapeptide(tmp_path):
    """flowcg-train experiment=ala4_implicit end to end, shrunk, then flowcg-sample on it: per-residue
    basins, (φ, ψ) and Ramachandran plots, the slow latents reported against every residue's torsions."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    run_dir = tmp_path / "run"
    # the slow torsions pinned to the ones slow_coordinates: auto picks (its 480 relaxed scans take 45 s;
    # the discovery is tested in tests/coordinates/test_slow_torsions.py); the model is the same
    overrides = ["experiment=ala4_implicit", "recipe=plain", "model.slow_coordinates=[59,63,75,78,85,88]", "model.n_couplings=2", "model.hidden=16", "model.fast_hidden=8",
                 "train.batch_size=64", "train.steps_per_stage=2", "train.final_steps=4", "train.eval_batch_size=64", "n_samples=200",
                 "compile=false", "logger=none", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    program = Path(sys.executable).parent / "flowcg-train"
    done = subprocess.run([str(program), *overrides], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in (1, 2, 3):
        assert sum(metrics[f"res{k}_basin_{b}"] for b in ("beta", "alpha_R", "alpha_L")) == pytest.approx(1.0)
        assert (run_dir / "plots" / f"ramachandran_residue{k}.png").is_file()
    assert metrics["nonfinite_energies"] == 0
    out = tmp_path / "sample"
    done = subprocess.run([str(program.parent / "flowcg-sample"), f"run={run_dir}", "n=128", "compile=false", f"hydra.run.dir={out}"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out / "samples.npz") as data:
        assert data["phi"].shape == data["psi"].shape == (128, 3)
    assert all((out / f"ramachandran_residue{k}.png").is_file() for k in (1, 2, 3))
    assert "phi1(ACE1:C-ALA2:N-ALA2:CA-ALA2:C)" in json.loads((out / "metrics.json").read_text())["cv_discovery"]["latents"][0]["circular_correlation"]
