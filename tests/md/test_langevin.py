import math

import pytest
import torch

from flowcg.md.langevin import LangevinBAOAB
from flowcg.units import kT

TEMPERATURE = 300.0
KT = kT(TEMPERATURE)


def test_harmonic_oscillator_equipartition():
    k, mass, n_replicas = 100.0, 12.0, 2000  # kJ/mol/nm², amu
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n_replicas, 1, 3, generator=g, dtype=torch.float64) * math.sqrt(KT / k)
    integrator = LangevinBAOAB(lambda x: -k * x, [mass], timestep_ps=0.01, friction_per_ps=2.0, temperature_K=TEMPERATURE)
    result = integrator.run(x0, n_steps=400, save_every=20, seed=1)
    assert result.frames.shape == (20, n_replicas, 1, 3) and result.alive.all()
    assert result.stopped.numel() == 0 and all(r == "" for r in result.stop_reason)
    # ⟨x²⟩ = kT / k per coordinate and ⟨½ m v²⟩ = ½ kT per degree of freedom.
    assert result.frames.pow(2).mean().item() == pytest.approx(KT / k, rel=0.1)
    assert (0.5 * mass * result.velocities.pow(2)).mean().item() == pytest.approx(0.5 * KT, rel=0.1)


def springs(x, rest=0.3, k=500.0):
    """Harmonic springs (rest length nm, k kJ/mol/nm²) between consecutive beads; NaN beyond |x₀| = 1 nm."""
    bond = x[:, 1:] - x[:, :-1]
    length = torch.linalg.vector_norm(bond, dim=-1, keepdim=True)
    pull = k * (length - rest) * bond / length
    forces = torch.zeros_like(x)
    forces[:, :-1] += pull
    forces[:, 1:] -= pull
    # A "cliff" as a learned potential may have one outside its data: NaN forces past x = 1 nm.
    cliff = x[:, 0, 0] > 1.0
    return torch.where(cliff[:, None, None], torch.full_like(forces, math.nan), forces)


def chains(n_replicas):
    x = torch.zeros(n_replicas, 3, 3, dtype=torch.float64)
    x[:, :, 0] = torch.tensor([0.0, 0.3, 0.6]) - 0.3
    return x


def test_broken_replicas_are_stopped_and_do_not_poison_the_others():
    x0 = chains(6)
    x0[1, 1] = x0[1, 0] + 0.01  # overlapping beads: stopped before the first step
    x0[2, :, 0] += 1.29  # bead 0 at x = 0.99 nm, just short of the cliff ...
    v0 = torch.zeros_like(x0)
    v0[2, :, 0] = 2.0  # ... and moving towards it at 2 nm/ps
    integrator = LangevinBAOAB(springs, [12.0, 13.0, 14.0], timestep_ps=0.002, temperature_K=TEMPERATURE)
    result = integrator.run(x0, n_steps=200, save_every=10, seed=3, v0=v0)

    assert result.stopped.tolist() == [1, 2]
    assert result.stopped_step[1] == 0 and result.stop_reason[1] == "overlap"
    assert 0 < result.stopped_step[2] < 20 and result.stop_reason[2] == "non-finite"
    assert not result.alive[:, 1:3].any() and result.alive[:, [0, 3, 4, 5]].all()
    # Everything returned is finite; the stopped replica sits at its last good state.
    assert torch.isfinite(result.frames).all() and torch.isfinite(result.velocities).all()
    assert result.positions[2, 0, 0] <= 1.0
    torch.testing.assert_close(result.frames[-1, 1], x0[1])
    # The live replicas moved, and exactly as they would have without the broken ones.
    assert (result.frames[-1, [0, 3, 4, 5]] - x0[[0, 3, 4, 5]]).abs().max() > 1e-3
    healthy = integrator.run(chains(6), n_steps=200, save_every=10, seed=3, v0=torch.zeros_like(x0))
    torch.testing.assert_close(result.frames[:, [0, 3, 4, 5]], healthy.frames[:, [0, 3, 4, 5]], rtol=0, atol=0)
    assert healthy.alive.all()


@pytest.mark.parametrize(
    "check, value, reason",
    [("max_force", 1.0, "force"), ("max_displacement", 1e-6, "displacement"), ("min_distance", 0.28, "overlap")],
)
def test_each_threshold_stops_a_replica(check, value, reason):
    integrator = LangevinBAOAB(springs, [12.0] * 3, temperature_K=TEMPERATURE, **{check: value})
    x0 = chains(2)
    x0[1, 2, 0] += 0.05  # a stretched spring: force 25 kJ/mol/nm
    if check == "min_distance":
        x0[1, 2, 0] -= 0.1  # closest pair 0.25 nm
    result = integrator.run(x0, n_steps=5, seed=0, v0=torch.zeros_like(x0))
    assert result.stop_reason[1] == reason
    if check != "max_displacement":  # replica 0 also moves, so only the force / distance checks spare it
        assert result.alive[:, 0].all()


def test_seeded_and_validated():
    integrator = LangevinBAOAB(springs, [12.0] * 3, temperature_K=TEMPERATURE)
    a = integrator.run(chains(3), n_steps=10, seed=7)
    b = integrator.run(chains(3), n_steps=10, seed=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)
    assert not torch.equal(a.frames, integrator.run(chains(3), n_steps=10, seed=8).frames)
    assert integrator.run(chains(3), n_steps=10, save_every=4).frames.shape == (2, 3, 3, 3)
    with pytest.raises(ValueError, match="x0 must have shape"):
        integrator.run(torch.zeros(2, 4, 3), n_steps=1)
    with pytest.raises(ValueError, match="positive"):
        LangevinBAOAB(springs, [12.0, 0.0])


def test_cgschnet_with_prior_runs_on_the_aldp_backbone(backbone):
    from flowcg.cg.prior import CGPrior, HarmonicAngles, HarmonicBonds
    from flowcg.cg.schnet import CGSchNet
    from flowcg.targets.systems import load_system

    x_ref = torch.as_tensor(backbone.map_positions(load_system("aldp_vacuum").positions[None]), dtype=torch.float32)
    bonds = HarmonicBonds(backbone.bonds, [0.135, 0.146, 0.152, 0.134], [2.0e5] * 4)
    angles = HarmonicAngles(backbone.angles, [2.1, 1.95, 2.05], [400.0] * 3)
    prior = CGPrior({"bonds": bonds, "angles": angles})
    model = CGSchNet(backbone.bead_types, hidden=16, n_filters=16, n_rbf=12, n_interactions=1, prior=prior)
    integrator = LangevinBAOAB(model.eval().forces, backbone.masses, timestep_ps=0.002, temperature_K=TEMPERATURE)
    result = integrator.run(x_ref.repeat(8, 1, 1), n_steps=50, save_every=25, seed=0)
    assert result.frames.shape == (2, 8, 5, 3) and result.alive.all()
    lengths = HarmonicBonds.coordinates(result.frames[-1], bonds.indices)
    assert ((lengths > 0.1) & (lengths < 0.2)).all()
