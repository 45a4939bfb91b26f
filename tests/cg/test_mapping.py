import mdtraj as md
import numpy as np
import pytest
import torch
from mdtraj.geometry.dihedral import indices_phi, indices_psi

from flowcg.cg.mapping import CGMapping


def bead_labels(mapping):
    return [(mapping.topology.atom(int(a)).residue.name, mapping.topology.atom(int(a)).name) for a in mapping.bead_atoms]


def chain_topology(n_atoms):
    """A linear chain of carbons 0–1–…–(n−1) in one residue."""
    top = md.Topology()
    residue = top.add_residue("UNK", top.add_chain())
    atoms = [top.add_atom(f"C{i}", md.element.carbon, residue) for i in range(n_atoms)]
    for a, b in zip(atoms[:-1], atoms[1:]):
        top.add_bond(a, b)
    return top


def test_backbone_beads_in_order(backbone):
    assert backbone.n_atoms == 22 and backbone.n_beads == 5
    assert bead_labels(backbone) == [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]
    assert backbone.type_names == ["C", "N", "CA"]
    assert backbone.bead_types.tolist() == [0, 1, 2, 0, 1]


def test_backbone_assignment_follows_the_bond_graph(backbone):
    # ACE (0-5) → C(ACE); N, H → N; CA, HA, CB, HB* → CA; C, O → C; NME (16-21) → N(NME).
    expected = [0] * 6 + [1] * 2 + [2] * 6 + [3] * 2 + [4] * 6
    assert backbone.assignment.tolist() == expected
    assert (backbone.assignment[backbone.bead_atoms] == np.arange(5)).all()
    assert backbone.masses.sum() == pytest.approx(sum(a.element.mass for a in backbone.topology.atoms))


def test_backbone_cg_topology_has_phi_and_psi(backbone, aldp_topology):
    assert backbone.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert backbone.angles.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    atoms_of_dihedrals = backbone.bead_atoms[backbone.dihedrals]
    assert atoms_of_dihedrals.tolist() == [indices_phi(aldp_topology)[0].tolist(), indices_psi(aldp_topology)[0].tolist()]
    assert backbone.nonbonded_pairs().tolist() == [[0, 3], [0, 4], [1, 4]]
    assert backbone.nonbonded_pairs(min_separation=2).shape == (6, 2)


def test_heavy_atom_mapping(aldp_topology):
    heavy = CGMapping.heavy_atoms(aldp_topology)
    assert heavy.n_beads == 10
    assert all(heavy.topology.atom(int(a)).element.symbol != "H" for a in heavy.bead_atoms)
    assert heavy.n_types == 10  # residue + atom name tells the methyl C of NME from carbonyl Cs
    assert len(heavy.bonds) == 9  # the heavy-atom graph of ALDP is a tree
    # Every hydrogen goes to the heavy atom it is bonded to.
    for a, b in aldp_topology.bonds:
        for h, heavy_atom in ((a, b), (b, a)):
            if h.element.symbol == "H":
                assert heavy.bead_atoms[heavy.assignment[h.index]] == heavy_atom.index


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_positions_sliced_and_forces_summed(backbone, backend):
    rng = np.random.default_rng(0)
    x, f = rng.normal(size=(4, 22, 3)), rng.normal(size=(4, 22, 3))
    if backend == "torch":
        x, f = torch.as_tensor(x), torch.as_tensor(f)
    positions, forces = backbone.map_positions(x), backbone.map_forces(f)
    assert type(positions) is type(x) and type(forces) is type(f)
    assert tuple(positions.shape) == tuple(forces.shape) == (4, 5, 3)
    x, f, positions, forces = (np.asarray(t) for t in (x, f, positions, forces))
    np.testing.assert_array_equal(positions, x[:, [4, 6, 8, 14, 16]])
    # Total force is conserved, and each bead gets exactly its atoms' forces.
    np.testing.assert_allclose(forces.sum(1), f.sum(1), atol=1e-12)
    np.testing.assert_allclose(forces[:, 2], f[:, 8:14].sum(1), atol=1e-12)
    np.testing.assert_allclose(positions, np.einsum("kn,bnd->bkd", backbone.position_map, x))


def test_force_map_is_differentiable(backbone):
    f = torch.randn(2, 22, 3, requires_grad=True)
    backbone.map_forces(f).pow(2).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


def test_ties_go_to_the_lower_bead_index():
    top = chain_topology(5)  # beads on atoms 0 and 2 / 4: atom 1 and atom 3 are equidistant
    assert CGMapping(top, [0, 2, 4]).assignment.tolist() == [0, 0, 1, 1, 2]
    assert CGMapping(top, [4, 2, 0]).assignment.tolist() == [2, 1, 1, 0, 0]
    # Beads 0 and 2 of the chain are bonded through the non-bead atom 1.
    assert CGMapping(top, [0, 2, 4]).bonds.tolist() == [[0, 1], [1, 2]]


def test_bad_selections_are_rejected(aldp_topology):
    with pytest.raises(ValueError, match="picks no atoms"):
        CGMapping(aldp_topology, "name XYZ")
    with pytest.raises(ValueError, match="distinct"):
        CGMapping(aldp_topology, [4, 4])
    top = chain_topology(3)
    top.add_atom("X", md.element.carbon, top.residue(0))  # unbonded atom
    with pytest.raises(ValueError, match="not bonded"):
        CGMapping(top, [0])
    with pytest.raises(ValueError, match=r"\(\.\.\., 22, 3\)"):
        CGMapping.aldp_backbone(aldp_topology).map_positions(np.zeros((2, 5, 3)))
