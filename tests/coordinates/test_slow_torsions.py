"""Slow-torsion discovery from the force field: symmetric rotors are left out, the relaxed scans
rank φ, ψ above the peptide bonds, and ``slow_coordinates="auto"`` builds the backbone model."""

import math

import numpy as np
import pytest
import torch

from flowcg.builders import build_internal_model
from flowcg.coordinates import InternalCoordinateTransform
from flowcg.coordinates.harmonic import minimized_positions
from flowcg.coordinates.slow_torsions import (circular_spread, coupled_torsion_blocks, discover_slow_torsions, relaxed_torsion_scan,
                                            symmetric_rotor)
from flowcg.errors import ConfigError
from flowcg.targets import load_target


@pytest.fixture(scope="module")
def vacuum():
    return load_target("aldp_vacuum")


@pytest.fixture(scope="module")
def discovery(vacuum):
    transform = InternalCoordinateTransform.from_topology(vacuum.topology)
    return transform, discover_slow_torsions(vacuum.system, vacuum.topology, transform,
                                             minimized_positions(vacuum.system, vacuum.positions), 2, vacuum.temperature)


def test_methyl_rotors_are_symmetric_and_backbone_bonds_are_not(vacuum):
    index = {f"{a.residue.name}:{a.name}": a.index for a in vacuum.topology.atoms}
    top = vacuum.topology
    for b, a in (("ACE:CH3", "ACE:C"), ("ALA:CB", "ALA:CA"), ("NME:C", "NME:N")):  # methyl groups: 3 terminal H
        assert symmetric_rotor(top, index[b], index[a]) and symmetric_rotor(top, index[a], index[b])
    for b, a in (("ALA:N", "ALA:CA"), ("ALA:CA", "ALA:C"), ("ACE:C", "ALA:N"), ("ALA:C", "NME:N")):  # phi, psi, omegas
        assert not symmetric_rotor(top, index[b], index[a])


def test_auto_picks_phi_and_psi_by_an_order_of_magnitude(discovery):
    transform, found = discovery
    assert found.selected == sorted(transform.backbone_indices)
    assert len(found.symmetric_rotors) == 3 and len(found.candidates) == 4  # 7 rotors: 3 methyls, phi, psi, 2 omegas
    spread = {c["index"]: c["spread"] for c in found.candidates}
    omegas = [spread[i] for i in spread if i not in found.selected]
    assert min(spread[i] for i in found.selected) > 5 * max(omegas)
    assert found.minimisations == 2 * 24 * 4 and "symmetric rotor" in found.table()


def test_relaxed_scan_goes_round_the_circle_both_ways(vacuum, discovery):
    transform, _ = discovery
    atoms = [int(a) for a in transform.atom_indices[transform.backbone_indices[0]]]
    x_min = minimized_positions(vacuum.system, vacuum.positions)
    forward_angles, forward = relaxed_torsion_scan(vacuum.system, x_min, atoms, 8, direction=1)
    backward_angles, backward = relaxed_torsion_scan(vacuum.system, x_min, atoms, 8, direction=-1)
    steps = np.angle(np.exp(1j * np.diff(forward_angles)))
    np.testing.assert_allclose(steps, 2 * math.pi / 8, atol=0.05)  # the restraint holds the torsion on the grid
    np.testing.assert_allclose(np.angle(np.exp(1j * (backward_angles[1:] - forward_angles[1:][::-1]))), 0, atol=0.05)  # point j at start - j step
    assert forward[0] == pytest.approx(backward[0], abs=1e-3)  # both start at the minimum


def test_circular_spread_limits():
    angles = np.linspace(-math.pi, math.pi, 24, endpoint=False)
    assert circular_spread(angles, np.zeros(24), 300.0) == pytest.approx(1.0, abs=1e-12)  # flat: uniform marginal
    pinned = np.where(np.arange(24) == 5, 0.0, 1e4)
    assert circular_spread(angles, pinned, 300.0) == pytest.approx(0.0, abs=1e-12)


def test_auto_builds_the_backbone_model(vacuum):
    torch.manual_seed(0)
    auto = build_internal_model(vacuum, slow_coordinates="auto", n_couplings=2, hidden=16, fast_hidden=8, seed=0)
    torch.manual_seed(0)
    named = build_internal_model(vacuum, slow_coordinates="backbone", n_couplings=2, hidden=16, fast_hidden=8, seed=0)
    for (key, a), (_, b) in zip(auto.state_dict().items(), named.state_dict().items()):
        assert torch.equal(a, b), key
    with pytest.raises(ConfigError, match="auto needs"):
        build_internal_model(vacuum, fit_reference=False, slow_coordinates="auto", n_couplings=2, hidden=16)


def test_bonded_blocks_pair_each_residues_phi_and_psi():
    """Torsions whose rotation axes share an atom form a block: (φ, ψ) per residue, never ψ_i with
    φ_{i+1} across the peptide bond; alanine dipeptide keeps one joint mixture."""
    from flowcg.flows.build import slow_coordinate_indices
    from flowcg.latent import BlockMixture, DiagonalGaussianMixture

    peptide = load_target("ala4_implicit")
    transform = InternalCoordinateTransform.from_topology(peptide.topology, constraints=peptide.constraints)
    backbone = slow_coordinate_indices(transform, transform.rotor_mask, 6, "backbone")  # φ1 ψ1 φ2 ψ2 φ3 ψ3
    assert coupled_torsion_blocks(transform, backbone) == [[0, 1], [2, 3], [4, 5]]
    shuffled = [backbone[i] for i in (5, 0, 3, 1, 2, 4)]
    assert coupled_torsion_blocks(transform, shuffled) == [[0, 5], [1, 3], [2, 4]]
    model = build_internal_model(peptide, fit_reference=False, slow_dim=6, slow_coordinates=backbone, slow_blocks="bonded",
                                 n_couplings=2, hidden=8, fast_hidden=8)
    assert isinstance(model.latent.slow, BlockMixture) and model.latent.slow.block_indices == [[0, 1], [2, 3], [4, 5]]
    state = model.latent.slow.resize_(5) and model.state_dict()  # as a prior refit leaves it
    reloaded = build_internal_model(peptide, fit_reference=False, slow_dim=6, slow_coordinates=backbone, slow_blocks="bonded",
                                    n_couplings=2, hidden=8, fast_hidden=8)
    reloaded.match_slow_prior(state).load_state_dict(state)
    assert reloaded.latent.slow.n_components == 5
    dipeptide = build_internal_model(load_target("aldp_vacuum"), fit_reference=False, slow_blocks="bonded", n_couplings=2, hidden=8)
    assert isinstance(dipeptide.latent.slow, DiagonalGaussianMixture)
    with pytest.raises(ConfigError, match="slow_blocks"):
        build_internal_model(peptide, fit_reference=False, slow_dim=6, slow_coordinates=backbone, slow_blocks="residues", n_couplings=2)
