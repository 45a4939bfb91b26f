"""Labels: mean-force labels collapse a query's weighted draws into the conditional mean force; importance weighting."""

import numpy as np
import pytest

from flowcg.active.flow_oracle import FlowOracle, _normalise_per_query
from flowcg.active.labels import Labels
from flowcg.errors import ConfigError


def test_mean_force_label_is_the_analytic_conditional_mean_force():
    """U(x) = ½ xᵀ A x on R² (kT = 1), CG coordinate x₁: the mean force is −(A₁₁ − A₁₂²/A₂₂) x₁.
    Draws of x₂ come from a broad Gaussian proposal, importance-weighted towards p(x₂ | x₁) as the
    flow oracle weights its draws."""
    a = np.array([[2.0, 0.8], [0.8, 1.0]])
    rng = np.random.default_rng(0)
    queries, k = np.array([-1.0, 0.3, 1.5]), 40_000
    x1 = np.repeat(queries, k)
    x2 = rng.normal(scale=2.0, size=x1.size)  # proposal N(0, 2²)
    u = 0.5 * (a[0, 0] * x1**2 + 2 * a[0, 1] * x1 * x2 + a[1, 1] * x2**2)
    log_w = -u - (-0.5 * (x2 / 2.0) ** 2)
    query = np.repeat(np.arange(len(queries)), k)
    weights = _normalise_per_query(log_w, query)
    force_x1 = -(a[0, 0] * x1 + a[0, 1] * x2)
    labels = Labels(np.zeros((x1.size, 1, 3)), x1[:, None, None], force_x1[:, None, None],
                    weights, query, u, n_energy_evaluations=x1.size)
    mean = labels.mean_force()
    exact = -(a[0, 0] - a[0, 1] ** 2 / a[1, 1]) * queries
    np.testing.assert_allclose(mean.cg_forces_kJ_mol_nm[:, 0, 0], exact, atol=0.02)
    np.testing.assert_allclose(mean.cg_positions_nm[:, 0, 0], queries)
    np.testing.assert_allclose(mean.weights, np.bincount(query, weights=weights))  # each query's Kish ESS
    assert len(mean) == mean.n_queries == 3 and mean.n_energy_evaluations == x1.size


def test_mean_force_keeps_the_force_matching_loss_up_to_a_constant():
    """Σ w_k |F_θ − F_k|² = W |F_θ − F̄|² + const for draws sharing their CG configuration."""
    rng = np.random.default_rng(1)
    forces, weights = rng.normal(size=(5, 2, 3)), rng.random(5)
    labels = Labels(np.zeros((5, 4, 3)), np.ones((5, 2, 3)), forces, weights, np.zeros(5, dtype=np.int64), np.zeros(5))
    mean = labels.mean_force()

    def rowwise(theta):
        return np.sum(weights * np.sum((theta - forces) ** 2, axis=(1, 2)))

    def collapsed(theta):
        return float(mean.weights[0] * np.sum((theta - mean.cg_forces_kJ_mol_nm[0]) ** 2))

    thetas = rng.normal(size=(2, 2, 3))
    assert rowwise(thetas[0]) - collapsed(thetas[0]) == pytest.approx(rowwise(thetas[1]) - collapsed(thetas[1]))


def test_unit_query_weight_makes_each_query_one_configuration():
    weights = np.array([3.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    labels = Labels(np.zeros((6, 4, 3)), np.zeros((6, 2, 3)), np.zeros((6, 2, 3)), weights, np.array([0, 0, 1, 1, 2, 2]), np.zeros(6))
    unit = labels.per_query_unit_weight()
    np.testing.assert_allclose(unit.weights, [0.75, 0.25, 0.5, 0.5, 0.0, 0.0])  # ratios kept, a dead query stays dead
    np.testing.assert_array_equal(labels.weights, weights)
    assert len(Labels.empty(4, 2).per_query_unit_weight()) == 0  # a round whose strategy found nothing to query


def test_unknown_query_weight_is_a_config_error():
    from flowcg.active.loop import LoopOptions

    with pytest.raises(ConfigError, match="query_weight"):
        LoopOptions(query_weight="ess")


def test_unknown_label_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="mean_force"):
        FlowOracle(model=_Eval(), target=None, mapping=None, backmapper=None, labels="median")


class _Eval:
    def eval(self):
        return self


def test_flow_oracle_mean_force_labels_collapse_its_draws():
    from flowcg.active.backmap import TorsionBackmapper
    from flowcg.cg.mapping import CGMapping
    from flowcg.pretrained import load_pretrained

    run = load_pretrained("aldp_vacuum")
    mapping = CGMapping.aldp_backbone(run.target.topology)
    backmapper = TorsionBackmapper(run.model.coordinates, run.target.positions, mapping)
    queries = mapping.map_positions(run.model.sample(5).x.double().numpy())
    draws = FlowOracle(run.model, run.target, mapping, backmapper, samples_per_query=8).label(queries, seed=3)
    mean = FlowOracle(run.model, run.target, mapping, backmapper, samples_per_query=8, labels="mean_force").label(queries, seed=3)
    assert len(mean) == 5 and mean.n_energy_evaluations == draws.n_energy_evaluations == 40
    for name in ("cg_positions_nm", "cg_forces_kJ_mol_nm", "weights"):
        np.testing.assert_allclose(getattr(mean, name), getattr(draws.mean_force(), name))


def test_importance_weights_are_joint_weights_over_the_pick_probability_scaled_to_the_query_ess(tmp_path):
    log_w = np.log(np.array([1.0, 3.0, 2.0, 2.0, 5.0, 7.0]))
    query = np.array([0, 0, 1, 1, 2, 2])
    labels = Labels(np.zeros((6, 4, 3)), np.zeros((6, 2, 3)), np.zeros((6, 2, 3)), np.array([1.0, 1, 1, 1, 0, 0]), query, np.zeros(6),
                    log_weights=log_w + 40.0)  # one unknown constant per batch
    design = np.array([2.0, 0.5, 1.0])
    weighted = labels.importance_weighted(design)
    raw = np.array([2.0, 6.0, 1.0, 1.0, 0.0, 0.0])  # w̃ × design of its query; a dead row stays dead
    per_query = np.array([8.0, 2.0])
    np.testing.assert_allclose(weighted.weights, raw / raw.sum() * per_query.sum() ** 2 / (per_query**2).sum())
    labels.save(tmp_path / "labels.npz")
    np.testing.assert_array_equal(Labels.load(tmp_path / "labels.npz").log_weights, labels.log_weights)
    with pytest.raises(ConfigError, match="joint log weights"):
        Labels(np.zeros((1, 4, 3)), np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), np.ones(1), np.zeros(1, dtype=np.int64),
               np.zeros(1)).importance_weighted(np.ones(1))  # an MD frame has none
