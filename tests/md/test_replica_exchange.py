"""Temperature replica exchange: swap moves, MBAR weights, sampling a toy exactly, and the walker runs built on it."""

import doctest
import math

import numpy as np
import pytest
import torch

import flowcg.md.replica_exchange
from flowcg.md.langevin import LangevinBAOAB
from flowcg.md.replica_exchange import TemperatureLadder, mbar_log_weights
from flowcg.md.walkers import BiasedWalkers, WalkerSettings
from flowcg.targets import load_target
from flowcg.units import kT


def test_doctests():
    assert doctest.testmod(flowcg.md.replica_exchange).failed == 0


def test_langevin_per_replica_temperature_equipartition():
    temperatures = torch.tensor([300.0, 900.0]).repeat(1000)
    k, mass = 100.0, 12.0
    integrator = LangevinBAOAB(lambda x: -k * x, [mass], timestep_ps=0.01, friction_per_ps=2.0, temperature_K=300.0)
    x0 = torch.zeros(len(temperatures), 1, 3, dtype=torch.float64)
    result = integrator.run(x0, n_steps=600, save_every=30, seed=2, temperature_K=temperatures)
    for t in (300.0, 900.0):
        hot = temperatures == t
        assert result.frames[10:, hot].pow(2).mean().item() == pytest.approx(kT(t) / k, rel=0.1)
        assert (mass * result.velocities[hot].pow(2)).mean().item() == pytest.approx(kT(t), rel=0.1)
    with pytest.raises(ValueError, match="temperature_K must have shape"):
        integrator.run(x0, 1, temperature_K=temperatures[:3])


def test_exchange_swaps_by_the_metropolis_rule_and_rescales_velocities():
    ladder = TemperatureLadder(300.0, 600.0, 3)
    x = torch.arange(6, dtype=torch.float64).view(6, 1, 1).expand(6, 1, 3).clone()  # 2 ladders of 3
    v = torch.ones(6, 1, 3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    # ladder 0: the colder walker holds the higher energy, always swapped; ladder 1: the reverse by
    # 1000 kJ/mol, never swapped. Parity 0 tries the pair (0, 1) only.
    energy = torch.tensor([10.0, 0.0, 5.0, 0.0, 1000.0, 5.0], dtype=torch.float64)
    alive = torch.ones(6, dtype=torch.bool)
    x1, v1, accepted = ladder.exchange(x, v, energy, alive, parity=0, generator=generator)
    assert x1[:, 0, 0].tolist() == [1, 0, 2, 3, 4, 5] and accepted.tolist() == [1, 0]
    ratio = math.sqrt(ladder.temperatures_K[1] / ladder.temperatures_K[0])
    assert v1[0, 0, 0].item() == pytest.approx(1 / ratio) and v1[1, 0, 0].item() == pytest.approx(ratio)
    assert v1[2:].eq(1).all() and x[:, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]  # inputs untouched
    # parity 1 tries (1, 2); a stopped walker is never swapped
    _, _, accepted = ladder.exchange(x, v, torch.tensor([0.0, 10.0, 0.0, 0.0, 10.0, 0.0]), alive, parity=1, generator=generator)
    assert accepted.tolist() == [0, 2]
    alive[5] = False
    _, _, accepted = ladder.exchange(x, v, torch.tensor([0.0, 10.0, 0.0, 0.0, 10.0, 0.0]), alive, parity=1, generator=generator)
    assert accepted.tolist() == [0, 1]


def test_exchange_acceptance_matches_the_metropolis_probability():
    ladder = TemperatureLadder(300.0, 400.0, 2)
    n = 20000
    energy = torch.tensor([2.0, 0.0]).repeat(n)  # the cold walker 2 kJ/mol above the hot one: always swapped
    energy[1::2] = 3.0  # ... now 1 kJ/mol below: p = exp((β₀ − β₁)(−1 kJ/mol))
    x = torch.zeros(2 * n, 1, 3, dtype=torch.float64)
    _, _, accepted = ladder.exchange(x, x.clone(), energy, torch.ones(2 * n, dtype=torch.bool), 0, torch.Generator().manual_seed(1))
    beta = 1 / kT(ladder.temperatures_K)
    expected = math.exp(float((beta[0] - beta[1]) * (2.0 - 3.0)))
    assert accepted.item() / n == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))


def test_mbar_weights_recover_a_known_distribution():
    """Frames from three temperatures of a 2-d harmonic well (U ~ kT Gamma(1)) reweighted to the lowest."""
    rng = np.random.default_rng(3)
    bath = np.repeat([300.0, 420.0, 600.0], 4000)
    potential = rng.exponential(kT(bath))
    log_w = mbar_log_weights(potential, bath, 300.0)
    w = np.exp(log_w)
    assert w.sum() == pytest.approx(1.0)
    assert (w * potential).sum() == pytest.approx(kT(300.0), rel=0.03)  # ⟨U⟩ = kT
    assert (w * (potential > 2 * kT(300.0))).sum() == pytest.approx(math.exp(-2), rel=0.05)
    with pytest.raises(ValueError, match="non-finite"):
        mbar_log_weights(np.array([1.0, np.inf]), np.array([300.0, 600.0]), 300.0)


def asymmetric_double_well(x):
    """U = h (x₀² − 1)² + s x₀ + ½ k (x₁² + x₂²) in kJ/mol for x in nm (one bead); h = 5 kT at 300 K."""
    h, s, k = 12.5, 2.5, 100.0
    force = torch.empty_like(x)
    force[..., 0] = -(4 * h * x[..., 0] * (x[..., 0] ** 2 - 1) + s)
    force[..., 1:] = -k * x[..., 1:]
    return force


def test_replica_exchange_samples_an_asymmetric_double_well():
    """Ladders 300–1200 K on a double well whose barrier (5 kT at 300 K) plain MD rarely crosses in
    the run: the MBAR-weighted frames and the 300 K frames alone both give the exact well populations."""
    ladder = TemperatureLadder(300.0, 1200.0, 4)
    temperatures = ladder.walker_temperatures_K(4 * 64)
    integrator = LangevinBAOAB(asymmetric_double_well, [1.0], timestep_ps=0.01, friction_per_ps=5.0, temperature_K=300.0,
                               max_displacement=None, min_distance=None)
    generator = torch.Generator().manual_seed(4)
    x = torch.zeros(len(temperatures), 1, 3, dtype=torch.float64)
    x[..., 0] = 1.0  # every walker starts in the minor (right) well
    v = integrator.maxwell_boltzmann(len(x), generator, x, temperatures)
    positions, bath = [], []

    def energy(x):
        return 12.5 * (x[:, 0, 0] ** 2 - 1) ** 2 + 2.5 * x[:, 0, 0] + 50.0 * x[:, 0, 1:].pow(2).sum(-1)

    for round_ in range(300):
        result = integrator.run(x, 20, save_every=20, seed=generator, v0=v, temperature_K=temperatures)
        x, v = result.positions, result.velocities
        x, v, _ = ladder.exchange(x, v, energy(x), torch.ones(len(x), dtype=torch.bool), round_ % 2, generator)
        if round_ >= 50:
            positions.append(x[:, 0, 0].clone())
            bath.append(temperatures.clone())
    x0, bath = torch.cat(positions).numpy(), torch.cat(bath).numpy()
    potential = 12.5 * (x0**2 - 1) ** 2 + 2.5 * x0  # the harmonic directions do not change the x₀ marginal
    grid = np.linspace(-2.5, 2.5, 20001)
    density = np.exp(-(12.5 * (grid**2 - 1) ** 2 + 2.5 * grid) / kT(300.0))
    exact_right = density[grid > 0].sum() / density.sum()  # ≈ 0.13
    # MBAR on the x₀ marginal: it is ∝ exp(−U(x₀)/kT) at every temperature (the harmonic part factorises)
    w = np.exp(mbar_log_weights(potential, bath, 300.0))
    assert (w * (x0 > 0)).sum() == pytest.approx(exact_right, abs=0.02)
    cold = bath == 300.0
    assert (x0[cold] > 0).mean() == pytest.approx(exact_right, abs=0.03)


@pytest.fixture(scope="module")
def vacuum():
    return load_target("aldp_vacuum", dtype="float64")


LADDER = WalkerSettings(n_walkers=6, build_ps=0, n_temperatures=3, max_temperature_K=500.0, exchange_fs=20,
                        equilibration_ps=0.04, save_interval_fs=10, chunk_ps=0.04, seed=7)


def test_walkers_with_a_ladder_record_energies_and_resume_exactly(vacuum, tmp_path):
    whole = BiasedWalkers(vacuum, tmp_path / "whole", LADDER)
    metrics = whole.run(0.08)
    assert metrics["frames"] == 6 * 8 and metrics["temperatures_K"] == pytest.approx([300.0, 387.298, 500.0], rel=1e-5)
    assert len(metrics["exchange_acceptance"]) == 2 and metrics["bias_max_kj_mol"] == 0
    assert 0 <= metrics["basin_beta_target_temperature_frames"] <= 1
    assert "basin_beta_standard_error" not in metrics  # 2 ladders: too few for 16 groups
    errors = whole._basin_standard_errors(n_groups=2)  # one group per ladder
    assert set(errors) == {f"basin_{b}_standard_error" for b in ("beta", "alpha_R", "alpha_L")} and min(errors.values()) >= 0
    with np.load(tmp_path / "whole" / "reference.npz") as data:
        assert sorted(set(data["bath_temperature_K"].round(3).tolist())) == pytest.approx([300.0, 387.298, 500.0], rel=1e-5)
        np.testing.assert_allclose(np.exp(data["log_weight"]).sum(), 1.0)
        np.testing.assert_allclose(data["log_weight"], mbar_log_weights(data["potential_kj_mol"], data["bath_temperature_K"], 300.0))
        energy, _ = vacuum.energy_and_forces(whole.x)  # the last record holds the final state's energies
        np.testing.assert_allclose(data["potential_kj_mol"][-6:], energy.numpy(), rtol=1e-10)

    BiasedWalkers(vacuum, tmp_path / "parts", LADDER).run(0.04)
    resumed = BiasedWalkers(vacuum, tmp_path / "parts", LADDER)
    resumed.run(0.08)
    with np.load(tmp_path / "whole" / "reference.npz") as a, np.load(tmp_path / "parts" / "reference.npz") as b:
        for key in ("phi", "psi", "walker", "time_ps", "potential_kj_mol", "bath_temperature_K", "log_weight"):
            np.testing.assert_array_equal(a[key], b[key])
    assert resumed.exchanges["attempted"].tolist() == whole.exchanges["attempted"].tolist()
    assert resumed.exchanges["accepted"].tolist() == whole.exchanges["accepted"].tolist()


@pytest.mark.parametrize("options, message", [
    ({"n_temperatures": 3}, "max_temperature_K"),
    ({"n_temperatures": 3, "max_temperature_K": 500.0}, "without a bias"),
    ({"n_temperatures": 3, "max_temperature_K": 500.0, "build_ps": 0, "n_walkers": 4}, "multiple of walkers.n_temperatures"),
    ({"n_temperatures": 3, "max_temperature_K": 500.0, "build_ps": 0, "n_walkers": 6, "exchange_fs": 300}, "multiple of walkers.save_interval_fs"),
])
def test_ladder_settings_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        WalkerSettings(**options)


def test_ladder_top_must_exceed_the_target_temperature(vacuum, tmp_path):
    with pytest.raises(ValueError, match="must exceed"):
        BiasedWalkers(vacuum, tmp_path, WalkerSettings(n_walkers=6, build_ps=0, n_temperatures=3, max_temperature_K=250.0))
