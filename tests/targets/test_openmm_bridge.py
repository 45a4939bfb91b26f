"""The OpenMM bridge and the molecular targets built on both back-ends."""

import logging

import numpy as np
import pytest
import torch
from openmm import unit

from flowcg.errors import ConfigError
from flowcg.targets import TargetInputError, load_target
from flowcg.targets.openmm_bridge import OpenMMEvaluator, openmm_energy
from flowcg.targets.systems import ALDP_DIR, load_system


@pytest.fixture(scope="module")
def implicit():
    ms = load_system("aldp_implicit")
    rng = np.random.default_rng(0)
    return ms, ms.positions + 0.005 * rng.standard_normal((6, 22, 3))


def test_bridge_gradient_is_minus_forces(implicit):
    ms, frames = implicit
    evaluator = OpenMMEvaluator(ms.system, platform="Reference")
    x = torch.as_tensor(frames).requires_grad_(True)
    energy = openmm_energy(x, evaluator)
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)
    (grad,) = torch.autograd.grad((weights * energy).sum(), x)
    ref_energy, ref_forces = evaluator.evaluate(frames)
    assert np.allclose(energy.detach().numpy(), ref_energy)
    assert np.allclose(grad.numpy(), -weights.numpy()[:, None, None] * ref_forces)


def test_worker_pool_matches_single_process(implicit):
    ms, frames = implicit
    single = OpenMMEvaluator(ms.system, platform="Reference").evaluate(frames)
    pool = OpenMMEvaluator(ms.system, platform="Reference", n_workers=2)
    try:
        pooled = pool.evaluate(frames)
    finally:
        pool.close()
    assert np.array_equal(single[0], pooled[0]) and np.array_equal(single[1], pooled[1])


def test_non_finite_configurations_give_inf_and_warn(implicit, caplog):
    ms, frames = implicit
    bad = frames[:3].copy()
    bad[1, 3] = bad[1, 2]  # two atoms on top of each other
    bad[2, 0, 0] = np.nan
    evaluator = OpenMMEvaluator(ms.system, platform="CPU")
    with caplog.at_level(logging.WARNING, logger="flowcg.targets.openmm_bridge"):
        energy, forces = evaluator.evaluate(bad)
    assert np.isfinite(energy[0]) and np.isinf(energy[1:]).all() and (energy[1:] > 0).all()
    assert np.isfinite(forces).all() and not forces[1:].any()
    assert "could not evaluate 2 of 3" in caplog.text


def test_platform_errors():
    system = load_system("aldp_vacuum").system
    with pytest.raises(ValueError, match="unknown OpenMM platform 'Fast'"):
        OpenMMEvaluator(system, platform="Fast")
    with pytest.raises(ValueError, match="n_workers must be >= 1"):
        OpenMMEvaluator(system, n_workers=0)


@pytest.mark.parametrize("name", ["aldp_implicit", "aldp_vacuum", "aldp_amber14"])
def test_targets_agree_across_backends(name):
    torch_target = load_target(name, backend="torch", dtype="float64")
    openmm_target = load_target(name, backend="openmm", platform="Reference")
    assert torch_target.event_shape == (22, 3) and torch_target.topology.n_atoms == 22
    assert torch_target.kT == pytest.approx(
        (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    )
    x = torch.as_tensor(torch_target.positions)[None] + 0.003 * torch.randn(4, 22, 3, dtype=torch.float64)
    assert torch.allclose(torch_target.energy(x), openmm_target.energy(x), atol=1e-3 / torch_target.kT)
    assert torch.allclose(torch_target.forces(x), openmm_target.forces(x), atol=1e-2)
    assert torch_target.n_energy_evaluations == 8  # energy() and forces() each count the batch


def test_target_options_and_errors():
    target = load_target("aldp_implicit", backend="torch", temperature=600.0, dtype="float32")
    x = torch.as_tensor(target.positions, dtype=torch.float32)[None]
    assert target.energy(x).dtype == torch.float32
    assert target.kT == pytest.approx(2.0 * load_target("aldp_vacuum").kT)
    with pytest.raises(TargetInputError):
        target.energy(torch.zeros(2, 21, 3))
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        load_target("aldp_vacuum", backend="jax")
    with pytest.raises(ConfigError, match="unknown option target.options"):
        load_target("aldp_vacuum", cutoff=1.0)


@pytest.mark.parametrize("backend", ["torch", "openmm"])
def test_overlap_is_inf_with_zero_gradient(backend):
    target = load_target("aldp_implicit", backend=backend)
    x = torch.as_tensor(target.positions, dtype=torch.float32).repeat(2, 1, 1)
    x[1, 3] = x[1, 2]
    x.requires_grad_(True)
    u = target.energy(x)
    (grad,) = torch.autograd.grad(u.sum(), x)
    assert torch.isfinite(u[0]) and u[1] == float("inf")
    assert torch.isfinite(grad).all() and grad[0].abs().max() > 0 and not grad[1].any()


def test_generic_file_target():
    target = load_target(
        "molecule", path=ALDP_DIR / "alanine-dipeptide.prmtop", coordinates=ALDP_DIR / "alanine-dipeptide.crd",
        implicit_solvent="OBC1",
    )
    reference = load_target("aldp_implicit")
    x = torch.as_tensor(reference.positions, dtype=torch.float32)[None]
    assert torch.allclose(target.energy(x), reference.energy(x))
