"""Constrained BAOAB (SHAKE / RATTLE): constraints held, and the right distribution on the manifold."""

import math

import numpy as np
import pytest
import torch

from flowcg.md.constraints import BondConstraints
from flowcg.md.langevin import LangevinBAOAB
from flowcg.units import kT


def _orientation_potential(strength_kj_mol: float):
    """U = a u_z², u the unit vector of the 0→1 bond: an orientational well with a known law."""

    def forces(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            bond = x[:, 1] - x[:, 0]
            u_z = bond[:, 2] / torch.linalg.vector_norm(bond, dim=-1)
            (grad,) = torch.autograd.grad((strength_kj_mol * u_z.square()).sum(), x)
        return -grad

    return forces


def test_a_rigid_rotor_samples_its_boltzmann_orientation():
    """A C–H-like dumbbell (12 and 1 amu, d = 0.109 nm) in U = a cos²θ: ⟨cos²θ⟩ matches the
    quadrature of exp(−a c²/kT) over c ∈ [−1, 1] (the uniform measure on the sphere), the bond stays
    at d, the relative velocity stays perpendicular to it, and ⟨KE⟩ = (3N − 1) kT/2."""
    temperature, strength = 300.0, 2.0 * kT(300.0)
    constraints = BondConstraints([(0, 1, 0.109)], [12.0, 1.0])
    integrator = LangevinBAOAB(_orientation_potential(strength), [12.0, 1.0], timestep_ps=0.001, friction_per_ps=10.0,
                               temperature_K=temperature, max_displacement=None, min_distance=None, constraints=constraints)
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    x0 = torch.stack([torch.zeros_like(directions), 0.109 * directions / directions.norm(dim=-1, keepdim=True)], dim=1)
    result = integrator.run(x0, n_steps=1500, save_every=10, seed=1)
    assert result.stopped.numel() == 0
    frames = result.frames[50:]  # after 0.5 ps
    bond = frames[:, :, 1] - frames[:, :, 0]
    assert float((bond.norm(dim=-1) - 0.109).abs().max()) < 1e-12
    cos2 = (bond[..., 2] / bond.norm(dim=-1)).square().mean()
    c = np.linspace(-1, 1, 20001)
    density = np.exp(-strength / kT(temperature) * c**2)
    expected = float((c**2 * density).sum() / density.sum())
    assert abs(float(cos2) - expected) < 0.015, (float(cos2), expected)
    v, x = result.velocities, result.positions
    relative = ((v[:, 1] - v[:, 0]) * (x[:, 1] - x[:, 0])).sum(-1)
    assert float(relative.abs().max()) < 1e-9
    kinetic = 0.5 * (torch.tensor([12.0, 1.0], dtype=torch.float64)[None, :, None] * v.square()).sum(dim=(1, 2)).mean()
    assert abs(float(kinetic) / (2.5 * kT(temperature)) - 1) < 0.1


def test_shake_reports_a_replica_it_cannot_restore():
    constraints = BondConstraints([(0, 1, 0.1)], [1.0, 1.0], max_iterations=20)
    before = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]] * 2, dtype=torch.float64)
    after = before.clone()
    after[1, 1] = torch.tensor([0.0, 0.5, 0.0])  # moved perpendicular to the old bond: no solution along it
    projected, converged = constraints.project_positions(before, after)
    assert converged.tolist() == [True, False]
    assert abs(float(torch.linalg.vector_norm(projected[0, 1] - projected[0, 0])) - 0.1) < 1e-12


@pytest.mark.parametrize("bad", [[], [(0, 1, -0.1)], [(0, 5, 0.1)]])
def test_bad_constraints_are_refused(bad):
    from flowcg.errors import ConfigError

    with pytest.raises(ConfigError):
        BondConstraints(bad, [1.0, 1.0])


def test_docstring_examples():
    import doctest

    import flowcg.md.constraints

    assert doctest.testmod(flowcg.md.constraints).failed == 0
