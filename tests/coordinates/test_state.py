"""The conformational state of a molecular target: D and cis frames are outside l_trans, inside all;
one-shot samples outside the state get weight 0 and every estimator still counts them."""

import doctest
import math

import mdtraj as md
import numpy as np
import pytest
import torch

import flowcg.coordinates.state
from flowcg.analysis.molecular import isomer_shares
from flowcg.builders import build_target
from flowcg.coordinates.state import ConformationalState
from flowcg.errors import ConfigError
from flowcg.flows.build import build_flow
from flowcg.sampling import draw_samples
from flowcg.targets.synthetic import DoubleWell
from tests.coordinates.conftest import rotate_about_bond


def test_state_doctests():
    assert doctest.testmod(flowcg.coordinates.state).failed == 0


@pytest.fixture(scope="module")
def isomers(aldp):
    """The L, all-trans structure, its mirror image (D) and its NME cap turned to cis."""
    trans = np.asarray(aldp.positions)
    return np.stack([trans, -trans, rotate_about_bond(trans, 14, 16, [17, 18, 19, 20, 21], math.pi)])


def test_d_and_cis_frames_are_outside_l_trans_and_inside_all(aldp, isomers):
    assert ConformationalState(aldp.topology, "l_trans").contains(isomers).tolist() == [True, False, False]
    assert ConformationalState(aldp.topology, "all").contains(isomers).tolist() == [True, True, True]
    shares = isomer_shares(aldp.topology, isomers, np.log([1.0, 1.0, 2.0]))
    assert shares == pytest.approx({"fraction_d": 1 / 3, "fraction_cis": 1 / 3, "fraction_cis_rw": 0.5})


def test_a_topology_with_nothing_to_check_is_all_in_state():
    topology = md.Topology()
    residue = topology.add_residue("ETH", topology.add_chain())
    topology.add_bond(topology.add_atom("C1", md.element.carbon, residue), topology.add_atom("C2", md.element.carbon, residue))
    assert ConformationalState(topology, "l_trans").contains(np.zeros((2, 2, 3))).tolist() == [True, True]
    assert isomer_shares(topology, np.zeros((2, 2, 3)), np.zeros(2)) == {"fraction_d": 0.0, "fraction_cis": 0.0, "fraction_cis_rw": 0.0}


def test_the_molecular_target_carries_its_state_and_refuses_an_unknown_one(isomers):
    assert build_target({"name": "aldp_vacuum", "options": {}}).in_state(isomers).tolist() == [True, False, False]
    assert build_target({"name": "aldp_vacuum", "options": {"state": "all"}}).in_state(isomers).all()
    with pytest.raises(ConfigError, match="unknown state 'cis'; choose one of l_trans, all"):
        build_target({"name": "aldp_vacuum", "options": {"state": "cis"}})


class RightHalfWell(DoubleWell):
    """The double well restricted to x₀ > 0, as a molecule is to its state."""

    def in_state(self, x):
        return np.asarray(x)[:, 0] > 0


def test_draws_outside_the_state_get_zero_weight_and_still_count():
    torch.manual_seed(0)
    flow = build_flow(dim=2, slow_dim=1, n_components=2, n_couplings=2, hidden=8, prior_init_spread=2.0, seed=0).double()
    half = draw_samples(flow, RightHalfWell(), 4000)
    inside = half.x[:, 0] > 0
    assert 0.1 < inside.mean() < 0.9 and half.in_state.tolist() == inside.tolist()
    log_w_inside = -half.energies_kT[inside] - half.log_q[inside]
    np.testing.assert_array_equal(half.log_w[inside], log_w_inside)
    assert np.isneginf(half.log_w[~inside]).all() and np.isfinite(half.energies_kT).all()  # the energy is the target's everywhere
    summary = half.summary()
    assert summary["n_samples"] == 4000 and summary["fraction_outside_state"] == pytest.approx(1 - inside.mean())
    w = np.exp(log_w_inside - log_w_inside.max())
    assert summary["ess"] == pytest.approx(w.sum() ** 2 / (4000 * (w**2).sum()))  # every draw counts in N
