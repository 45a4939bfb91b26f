"""The torch force field reproduces OpenMM (energies and forces) and refuses what it cannot do."""

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from flowcg.targets.forcefield import (
    ForceFieldMismatchError,
    OBCGeneralizedBorn,
    TorchForceField,
    UnsupportedForceError,
    check_against_openmm,
    unordered_pairs,
)
from flowcg.targets.openmm_bridge import OpenMMEvaluator
from flowcg.targets.systems import ALDP_DIR, load_system, load_system_from_files


def _compare(system, positions, frames, dtype):
    ff = TorchForceField(system, positions, dtype=dtype)
    energy, forces = ff.energy_and_forces(torch.as_tensor(frames, dtype=dtype))
    ref_energy, ref_forces = OpenMMEvaluator(system, platform="Reference").evaluate(frames)
    return np.abs(energy.double().numpy() - ref_energy), np.abs(forces.double().numpy() - ref_forces)


def test_parity_float64(preset_frames):
    ms, frames = preset_frames
    de, df = _compare(ms.system, ms.positions, frames, torch.float64)
    assert de.max() <= 1e-3 and df.max() <= 1e-2, (de.max(), df.max())


def test_parity_float32(preset_frames):
    ms, frames = preset_frames
    de, df = _compare(ms.system, ms.positions, frames, torch.float32)
    assert de.max() <= 0.05, de.max()
    assert df.max() <= 1.0, df.max()


def test_target_cast_to_float64_is_exact(preset_frames):
    """A float32 target cast with ``.to(torch.float64)`` (as the CLI's ``dtype=float64`` does) computes
    in float64 with the exact parameters: OpenMM's energies and forces to round-off, not float32's
    ~1e-7 relative error; a cast back to float32 works too."""
    from flowcg import load_target

    ms, frames = preset_frames
    target = load_target(ms.name).to(torch.float64)
    assert target.forcefield.dtype == torch.float64
    assert {b.dtype for b in target.buffers() if b.is_floating_point()} == {torch.float64}
    x = torch.as_tensor(frames)
    energy, forces = target.energy(x) * target.kT, target.forces(x)
    assert energy.dtype == forces.dtype == torch.float64
    ref_energy, ref_forces = OpenMMEvaluator(ms.system, platform="Reference").evaluate(frames)
    np.testing.assert_allclose(energy.numpy(), ref_energy, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(forces.numpy(), ref_forces, rtol=1e-9, atol=1e-7)
    back = target.float()
    assert back.forcefield.dtype == torch.float32 and back.energy(x.float()).dtype == torch.float32


def test_gb_model_identified():
    models = {}
    for preset in ("aldp_implicit", "aldp_amber14"):
        ff = TorchForceField(load_system(preset).system)
        models[preset] = [t.model for t in ff.terms.values() if isinstance(t, OBCGeneralizedBorn)]
    assert models == {"aldp_implicit": ["OBC1"], "aldp_amber14": ["OBC2"]}


def _prmtop_system(**kwargs):
    prmtop = app.AmberPrmtopFile(str(ALDP_DIR / "alanine-dipeptide.prmtop"))
    return prmtop.createSystem(constraints=None, **kwargs)


@pytest.mark.parametrize(
    "variant",
    ["native_gbsaobc", "custom_gb_cutoff", "custom_gb_kappa", "obc2_prmtop"],
)
def test_gb_variants(variant):
    """Native GBSAOBCForce, the CustomGBForce with a cutoff (and its 1/r_c shift) and with salt."""
    ms = load_system("aldp_implicit")
    if variant == "native_gbsaobc":
        system = load_system_from_files(
            ALDP_DIR / "alanine-dipeptide.pdb", forcefield=["amber99sb.xml"], implicit_solvent="amber99_obc.xml"
        ).system
        assert any(isinstance(f, openmm.GBSAOBCForce) for f in system.getForces())
    elif variant == "custom_gb_cutoff":
        system = _prmtop_system(
            implicitSolvent=app.OBC1, nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=0.5 * unit.nanometer
        )
        for force in system.getForces():  # keep the GB cutoff, but a NoCutoff Coulomb/LJ
            if isinstance(force, openmm.NonbondedForce):
                force.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    elif variant == "custom_gb_kappa":
        system = _prmtop_system(implicitSolvent=app.OBC1, implicitSolventKappa=1.0 / unit.nanometer)
    else:
        system = _prmtop_system(implicitSolvent=app.OBC2)
    rng = np.random.default_rng(0)
    frames = ms.positions + 0.005 * rng.standard_normal((4, *ms.positions.shape))
    de, df = _compare(system, ms.positions, frames, torch.float64)
    assert de.max() <= 1e-3 and df.max() <= 1e-2, (de.max(), df.max())


@pytest.mark.parametrize("preset", ["aldp_implicit", "aldp_amber14"])
def test_engulfed_atom_matches_openmm(preset):
    """A hydrogen pushed 0.002 nm from its carbon lies inside the carbon's scaled GB sphere."""
    ms = load_system(preset)
    frame = ms.positions.copy()
    frame[0] = frame[1] + 0.02 * (frame[0] - frame[1])
    gb = next(t for t in TorchForceField(ms.system).terms.values() if isinstance(t, OBCGeneralizedBorn))
    pair = unordered_pairs(ms.system.getNumParticles()).T.tolist().index([0, 1])  # s_j[0, pair] = s_1
    assert gb.rho[0, 0] < gb.s_j[0, pair, 0] - np.linalg.norm(frame[0] - frame[1])  # the engulfed branch is hit
    de, df = _compare(ms.system, ms.positions, frame[None], torch.float64)
    assert de.max() <= 1e-3 and df.max() <= 1e-2, (de.max(), df.max())


def test_pair_gradient_matches_finite_differences():
    """The hand-written ∂U/∂r² of the pair terms against torch's finite-difference gradcheck."""
    ms = load_system("aldp_implicit")
    ff = TorchForceField(ms.system, dtype=torch.float64)
    x = torch.as_tensor(ms.positions[None] + 0.003 * np.random.default_rng(3).standard_normal((2, 22, 3)))
    assert torch.autograd.gradcheck(ff, (x.requires_grad_(True),), eps=1e-6, atol=1e-4, rtol=1e-5)


def test_unsupported_force_is_named():
    system = load_system("aldp_vacuum").system
    system.addForce(openmm.CustomTorsionForce("k*theta^2"))
    with pytest.raises(UnsupportedForceError, match="does not implement CustomTorsionForce; use backend='openmm'"):
        TorchForceField(system)


def test_unsupported_custom_gb_expression():
    system = load_system("aldp_vacuum").system
    gb = openmm.CustomGBForce()
    gb.addPerParticleParameter("q")
    system.addForce(gb)
    with pytest.raises(UnsupportedForceError, match="CustomGBForce that is not an OBC GB/SA model"):
        TorchForceField(system)


def test_self_check_detects_mismatch():
    vacuum, implicit = load_system("aldp_vacuum"), load_system("aldp_implicit")
    ff = TorchForceField(vacuum.system)
    with pytest.raises(ForceFieldMismatchError, match="disagrees with OpenMM"):
        check_against_openmm(ff, implicit.system, implicit.positions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_overlapping_atoms_give_infinite_energy(dtype):
    ms = load_system("aldp_implicit")
    ff = TorchForceField(ms.system, dtype=dtype)
    x = torch.as_tensor(ms.positions, dtype=dtype).repeat(2, 1, 1)
    x[1, 3] = x[1, 2]
    energy = ff(x)
    assert torch.isfinite(energy[0]) and not torch.isfinite(energy[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autograd_and_chunks_match_energy_and_forces(monkeypatch, dtype):
    """−∂U/∂x through autograd (the Function's backward) equals the one-pass forces, whatever the chunking."""
    from flowcg.targets.forcefield import model as forcefield

    ms = load_system("aldp_implicit")
    ff = TorchForceField(ms.system, dtype=dtype)
    x = torch.as_tensor(ms.positions[None] + 0.003 * np.random.default_rng(4).standard_normal((7, 22, 3)), dtype=dtype)
    energy, forces = ff.energy_and_forces(x)
    monkeypatch.setattr(forcefield, "CHUNK", 3)  # two full chunks and a partial one
    x.requires_grad_(True)
    chunked = ff(x)
    (2.0 * chunked).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(chunked.detach(), energy, **tol)
    # float32 forces are sums of terms up to ~1e4 kJ/(mol nm): another chunking reorders them,
    # so the scale is max |F| (as in the OpenMM self-check), not each component
    force_tol = dict(rtol=0, atol=1e-5 * float(forces.abs().max())) if dtype == torch.float32 else tol
    torch.testing.assert_close(x.grad, -2.0 * forces, **force_tol)


def _perturbed_frames(ms, n: int, dtype) -> torch.Tensor:
    rng = np.random.default_rng(5)
    return torch.as_tensor(ms.positions[None] + 0.003 * rng.standard_normal((n, *ms.positions.shape)), dtype=dtype)


@pytest.mark.compile
def test_compiled_kernels_match_eager(monkeypatch):
    """torch.compile'd full chunks give the eager energies and forces; the remainder runs eagerly.
    The option reaches the force field through ``load_target``."""
    from flowcg import load_target
    from flowcg.targets.forcefield import model as forcefield

    monkeypatch.setattr(forcefield, "CHUNK", 4)  # one compiled chunk and an eager remainder of 2
    ms = load_system("aldp_implicit")
    eager = TorchForceField(ms.system, dtype=torch.float64)
    compiled = load_target("aldp_implicit", dtype="float64", compile=True).forcefield
    x = _perturbed_frames(ms, 6, torch.float64)
    energy, forces = compiled.energy_and_forces(x)
    assert compiled.compiled and compiled._compiled_chunk._checked
    ref_energy, ref_forces = eager.energy_and_forces(x)
    torch.testing.assert_close(energy, ref_energy, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(forces, ref_forces, rtol=1e-10, atol=1e-8)


def test_failed_or_wrong_compilation_falls_back_to_eager(monkeypatch, caplog):
    """A compile error or a compiled kernel that disagrees with the eager one is logged, and the
    force field stays eager (exact) from then on."""
    from flowcg.targets.forcefield import model as forcefield

    monkeypatch.setattr(forcefield, "CHUNK", 4)
    ms = load_system("aldp_vacuum")
    x = _perturbed_frames(ms, 4, torch.float64)
    reference = TorchForceField(ms.system, dtype=torch.float64).energy_and_forces(x)

    def broken(y):
        raise RuntimeError("C++ compiler not found\nlong traceback")

    def wrong(y):
        energy, grad = forcefield.TorchForceField._chunk_energy_and_gradient(ff, y)
        return energy + 1.0, grad

    for fake, message in ((broken, "failed (C++ compiler not found)"), (wrong, "disagrees with the eager evaluation (on 4 of 4")):
        ff = TorchForceField(ms.system, dtype=torch.float64, compile=True)
        ff._compiled_chunk._compiled = fake
        with caplog.at_level("WARNING", logger="flowcg.compiled"):
            result = ff.energy_and_forces(x)
        assert message in caplog.text and not ff.compiled
        for got, want in zip(result, reference):
            torch.testing.assert_close(got, want)
        caplog.clear()
