"""MDOracle: restrained MD labels on alanine dipeptide in vacuum (small oracle, one thread)."""

import logging

import mdtraj as md
import numpy as np
import pytest
import torch

from flowcg import load_target
from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.md_oracle import MDOracle
from flowcg.cg.mapping import CGMapping
from flowcg.coordinates.internal import InternalCoordinateTransform

#: (φ, ψ) of the queries, rad: β and αR.
QUERY_TORSIONS = np.array([[-1.4, 2.6], [-1.2, -0.6]])
SMALL = dict(equilibration_steps=100, n_frames=3, frame_interval_steps=20, minimize_iterations=50)


def wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


@pytest.fixture(scope="module")
def target():
    return load_target("aldp_vacuum")


@pytest.fixture(scope="module")
def mapping(target):
    return CGMapping.aldp_backbone(target.topology)


@pytest.fixture(scope="module")
def backmapper(target, mapping):
    return TorsionBackmapper(InternalCoordinateTransform.from_topology(target.topology), target.positions, mapping)


@pytest.fixture(scope="module")
def queries(target, mapping, backmapper):
    """CG frames of the reference structure with (φ, ψ) set to QUERY_TORSIONS."""
    transform = backmapper.transform
    ic, _ = transform.inverse(torch.as_tensor(target.positions)[None])
    ic = ic.repeat(len(QUERY_TORSIONS), 1)
    ic[:, transform.phi_index] = torch.as_tensor(QUERY_TORSIONS[:, 0])
    ic[:, transform.psi_index] = torch.as_tensor(QUERY_TORSIONS[:, 1])
    x, _ = transform(ic)
    return mapping.map_positions(x.numpy())


@pytest.fixture(scope="module")
def oracle(target, mapping, backmapper):
    return MDOracle(target, mapping, backmapper, **SMALL)


@pytest.fixture(scope="module")
def labels(oracle, queries):
    return oracle.label(queries, seed=0)


def test_shapes_weights_and_evaluations(labels, oracle, queries, mapping):
    n, k = mapping.n_atoms, len(queries) * SMALL["n_frames"]
    assert labels.positions_nm.shape == (k, n, 3)
    assert labels.cg_positions_nm.shape == labels.cg_forces_kJ_mol_nm.shape == (k, mapping.n_beads, 3)
    assert labels.energies_kJ_mol.shape == labels.weights.shape == (k,)
    np.testing.assert_array_equal(labels.query, np.repeat(np.arange(len(queries)), SMALL["n_frames"]))
    np.testing.assert_array_equal(labels.weights, 1.0)
    np.testing.assert_array_equal(labels.cg_positions_nm, mapping.map_positions(labels.positions_nm))
    steps = SMALL["equilibration_steps"] + SMALL["n_frames"] * SMALL["frame_interval_steps"]
    assert labels.n_energy_evaluations == len(queries) * (steps + SMALL["minimize_iterations"])
    assert labels.wall_s > 0
    # the oracle works on its own copy of the system
    assert oracle.system is not oracle.target.system
    assert oracle.target.system.getNumForces() == oracle.system.getNumForces() - 1


def test_frames_stay_near_query_torsions(labels, target, oracle, backmapper, queries):
    np.testing.assert_allclose(backmapper.torsions(queries).numpy(), QUERY_TORSIONS, atol=1e-9)
    trajectory = md.Trajectory(labels.positions_nm, target.topology)
    phi, psi = md.compute_phi(trajectory)[1][:, 0], md.compute_psi(trajectory)[1][:, 0]
    wanted = QUERY_TORSIONS[labels.query]
    assert np.abs(wrap(phi - wanted[:, 0])).max() < 0.35
    assert np.abs(wrap(psi - wanted[:, 1])).max() < 0.35
    # the frames moved: they are MD frames, not the backmapped structure
    assert np.ptp(phi) > 1e-3


def test_energies_and_forces_are_unrestrained(labels, mapping, oracle, target):
    reference = load_target("aldp_vacuum", backend="torch", dtype="float64")
    x = torch.as_tensor(labels.positions_nm)
    energy = reference.energy(x).numpy() * reference.kT
    forces = reference.forces(x).numpy()
    tolerance = 1e-3 * np.abs(energy).max()
    np.testing.assert_allclose(labels.energies_kJ_mol, energy, rtol=0, atol=tolerance)
    np.testing.assert_allclose(mapping.map_forces(forces), labels.cg_forces_kJ_mol_nm,
                               rtol=0, atol=1e-3 * np.abs(forces).max())
    # The check can tell: the restraint energy ½ k Δ² of the frames is far above the tolerance.
    trajectory = md.Trajectory(labels.positions_nm, target.topology)
    delta = np.stack([md.compute_phi(trajectory)[1][:, 0], md.compute_psi(trajectory)[1][:, 0]], 1)
    restraint = 0.5 * 500.0 * (wrap(delta - QUERY_TORSIONS[labels.query]) ** 2).sum(1)
    assert restraint.mean() > 3 * tolerance
    assert oracle.restraint_group not in {f.getForceGroup() for f in target.system.getForces()}


def test_same_seed_same_labels_other_seed_differs(labels, oracle, queries):
    again = oracle.label(queries, seed=0)
    for name in ("positions_nm", "cg_forces_kJ_mol_nm", "energies_kJ_mol", "weights", "query"):
        np.testing.assert_array_equal(getattr(again, name), getattr(labels, name))
    other = oracle.label(queries, seed=1)
    assert not np.array_equal(other.positions_nm, labels.positions_nm)


def test_failed_query_is_dropped(oracle, queries, caplog):
    """A query whose structure is NaN gets no frames, a warning, and its evaluations still count."""
    bad = queries.copy()
    bad[0] = np.nan
    with caplog.at_level(logging.WARNING, logger="flowcg.active.md_oracle"):
        result = oracle.label(bad, seed=0)
    assert "query 0" in caplog.text
    assert set(result.query.tolist()) == {1}
    assert result.n_energy_evaluations >= SMALL["minimize_iterations"] * 2


def test_exploding_md_gives_empty_labels(target, mapping, backmapper, queries, caplog):
    """A 20 fs time step blows up every query's MD: no frames, correctly shaped empty labels."""
    unstable = MDOracle(target, mapping, backmapper, **{**SMALL, "minimize_iterations": 0}, timestep_fs=20.0)
    with caplog.at_level(logging.WARNING, logger="flowcg.active.md_oracle"):
        result = unstable.label(queries, seed=0)
    assert "query 0" in caplog.text and "query 1" in caplog.text
    assert len(result) == 0 and result.n_energy_evaluations > 0
    assert result.positions_nm.shape == (0, mapping.n_atoms, 3)
    assert result.cg_forces_kJ_mol_nm.shape == result.cg_positions_nm.shape == (0, mapping.n_beads, 3)
    assert result.weights.shape == result.query.shape == result.energies_kJ_mol.shape == (0,)


def test_bad_platform_and_shape_raise(target, mapping, backmapper, oracle):
    with pytest.raises(ValueError, match="platform"):
        MDOracle(target, mapping, backmapper, platform="NoSuchPlatform")
    with pytest.raises(ValueError, match="shape"):
        oracle.label(np.zeros((2, mapping.n_beads + 1, 3)), seed=0)
    with pytest.raises(ValueError, match="shape"):
        oracle.label(np.zeros((mapping.n_beads, 3)), seed=0)
