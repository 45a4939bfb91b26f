"""Amide bonds: found from the bond graph (caps included), ω as mdtraj computes it, a rotated cap is cis."""

import doctest
import math

import mdtraj as md
import numpy as np
import pytest
import torch

import flowcg.coordinates.bonds
from flowcg.coordinates.amide import AmideBonds
from tests.coordinates.conftest import rotate_about_bond


def test_bond_graph_doctests():
    assert doctest.testmod(flowcg.coordinates.bonds).failed == 0


def test_both_peptide_bonds_of_alanine_dipeptide_are_found_and_trans(aldp, md_frames):
    amides = AmideBonds(aldp.topology)
    assert amides.torsions.tolist() == [[1, 4, 6, 8], [8, 14, 16, 18]]  # ACE–ALA and ALA–NME
    frames = torch.tensor(md_frames)
    expected = md.compute_dihedrals(md.Trajectory(md_frames, aldp.topology), amides.torsions)
    torch.testing.assert_close(amides.omega(frames), torch.tensor(expected, dtype=frames.dtype), atol=1e-5, rtol=0)
    assert not amides.is_cis(frames).any()


def test_the_nme_cap_turned_half_way_round_is_cis(aldp):
    amides = AmideBonds(aldp.topology)
    trans = np.asarray(aldp.positions)
    cis = rotate_about_bond(trans, 14, 16, [17, 18, 19, 20, 21], math.pi)
    flags = amides.is_cis(torch.tensor(np.stack([trans, cis])))
    assert flags.tolist() == [[False, False], [False, True]]
    omega = amides.omega(torch.tensor(np.stack([trans, cis])))[:, 1]
    assert math.cos(float(omega[1] - omega[0])) == pytest.approx(-1.0, abs=1e-9)  # turned by π


def test_a_topology_without_amides_is_refused():
    topology = md.Topology()
    chain = topology.add_chain()
    residue = topology.add_residue("ETH", chain)
    a = topology.add_atom("C1", md.element.carbon, residue)
    b = topology.add_atom("C2", md.element.carbon, residue)
    topology.add_bond(a, b)
    with pytest.raises(ValueError, match="no amide bond"):
        AmideBonds(topology)
