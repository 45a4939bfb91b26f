import math

import mdtraj as md
import numpy as np
import pytest
import torch

from flowcg.coordinates.internal import InternalCoordinateTransform, validate_zmatrix


@pytest.fixture(scope="module")
def transform(aldp):
    return InternalCoordinateTransform.from_topology(aldp.topology)


def random_rigid_motion(x, seed=0):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=x.dtype))
    q = q * torch.sign(torch.linalg.det(q))  # proper rotation
    return x @ q.T + torch.tensor([0.3, -1.2, 2.0], dtype=x.dtype)


def free_coordinates(transform, x):
    """The 3N − 6 Cartesian coordinates left free by the frame convention, in placement order."""
    z = transform.zmatrix
    return torch.cat([x[z[1, 0], :1], x[z[2, 0], :2], *(x[z[k, 0]] for k in range(3, transform.n_atoms))])


def test_layout_and_masks(transform):
    assert transform.dim == 60
    assert [transform.kind.count(k) for k in ("bond", "angle", "torsion")] == [21, 20, 19]
    assert torch.equal(transform.periodic_mask, torch.tensor([k == "torsion" for k in transform.kind]))
    sizes = {"bond": 2, "angle": 3, "torsion": 4}
    assert all(len(atoms) == sizes[k] for atoms, k in zip(transform.atom_indices, transform.kind))


def test_phi_psi_are_torsion_coordinates(transform, aldp, md_frames):
    assert set(transform.atom_indices[transform.phi_index]) == {4, 6, 8, 14}
    assert set(transform.atom_indices[transform.psi_index]) == {6, 8, 14, 16}
    ic, _ = transform.inverse(torch.tensor(md_frames))
    traj = md.Trajectory(md_frames, aldp.topology)
    np.testing.assert_allclose(ic[:, transform.phi_index].numpy(), md.compute_phi(traj)[1][:, 0], atol=1e-5)
    np.testing.assert_allclose(ic[:, transform.psi_index].numpy(), md.compute_psi(traj)[1][:, 0], atol=1e-5)


def test_round_trip_float64(transform, md_frames):
    x = random_rigid_motion(torch.tensor(md_frames))
    ic, log_det_inverse = transform.inverse(x)
    y, log_det_forward = transform.forward(ic)
    assert (y - transform.canonicalize(x)).abs().max() <= 1e-5
    torch.testing.assert_close(log_det_forward, -log_det_inverse)
    torch.testing.assert_close(transform.canonicalize(x), transform.canonicalize(torch.tensor(md_frames)))


def test_round_trip_float32(transform, md_frames):
    x = torch.tensor(md_frames, dtype=torch.float32)
    ic, _ = transform.inverse(x)
    y, log_det = transform.forward(ic)
    assert y.dtype == log_det.dtype == torch.float32
    assert (y - transform.canonicalize(x)).abs().max() <= 1e-4


def test_frame_convention_and_ranges(transform, md_frames):
    ic, _ = transform.inverse(torch.tensor(md_frames))
    torsions = ic[:, transform.periodic_mask]
    assert torsions.min() > -math.pi and torsions.max() <= math.pi
    angles = ic[:, [k == "angle" for k in transform.kind]]
    assert angles.min() > 0 and angles.max() < math.pi
    x, _ = transform.forward(ic)
    a0, a1, a2 = transform.frame_atoms
    assert x[:, a0].abs().max() == 0
    assert x[:, a1, 1:].abs().max() == 0 and (x[:, a1, 0] > 0).all()
    assert x[:, a2, 2].abs().max() == 0 and (x[:, a2, 1] > 0).all()


def test_log_det_matches_autograd_jacobian(transform, md_frames):
    ic, _ = transform.inverse(torch.tensor(md_frames[:3]))
    _, log_det = transform.forward(ic)
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(
            lambda v: free_coordinates(transform, transform.forward(v[None])[0][0]), ic[i]
        )
        sign, log_abs_det = torch.linalg.slogdet(jacobian)
        assert sign != 0
        assert abs(log_abs_det.item() - log_det[i].item()) < 1e-8


def test_explicit_zmatrix_and_validation(transform, md_frames):
    explicit = InternalCoordinateTransform(transform.zmatrix.numpy())
    x = torch.tensor(md_frames)
    torch.testing.assert_close(explicit.inverse(x)[0], transform.inverse(x)[0])
    assert explicit.phi_index is None
    bad = transform.zmatrix.numpy().copy()
    bad[[3, 5]] = bad[[5, 3]]  # row 3 now references an atom placed later
    with pytest.raises(ValueError, match="placed later"):
        validate_zmatrix(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(transform, md_frames):
    x = torch.tensor(md_frames)
    ic, _ = transform.inverse(x)
    y, log_det = transform.to("cuda").forward(ic.cuda())
    transform.to("cpu")
    torch.testing.assert_close(y.cpu(), transform.forward(ic)[0])
    torch.testing.assert_close(log_det.cpu(), transform.forward(ic)[1])


@pytest.fixture(scope="module")
def tetrapeptide():
    from flowcg.targets.systems import langevin_frames, load_system

    system = load_system("ala4_implicit")
    frames = langevin_frames(system, n_frames=4, steps_per_frame=50, seed=5, platform="Reference")  # constraints applied
    return system, torch.tensor(frames)


def test_constrained_bonds_are_left_out_and_restored(tetrapeptide):
    """X–H bonds fixed: the vector drops them, forward puts them back at the constraint length, and
    frames that satisfy the constraints (OpenMM MD) round-trip."""
    system, x = tetrapeptide
    free = InternalCoordinateTransform.from_topology(system.topology)
    constrained = InternalCoordinateTransform.from_topology(system.topology, constraints=system.constraints)
    assert constrained.full_dim == free.dim == 120 and constrained.dim == 120 - 22
    assert len(constrained.fixed_bonds) == 22 and constrained.kind.count("bond") == 41 - 22
    assert constrained.periodic_mask.shape == constrained.improper_mask.shape == (98,)
    from flowcg.analysis.ramachandran import residue_torsion_atoms

    expected = [set(q.tolist()) for pair in residue_torsion_atoms(system.topology) for q in pair]  # φ1, ψ1, φ2, …
    assert [set(constrained.atom_indices[i]) for i in constrained.backbone_indices] == expected
    assert all(constrained.kind[i] == "torsion" for i in constrained.backbone_indices)
    ic, log_det_inverse = constrained.inverse(random_rigid_motion(x))
    y, log_det_forward = constrained.forward(ic)
    assert (y - constrained.canonicalize(x)).abs().max() <= 1e-6  # the MD's constraint tolerance
    torch.testing.assert_close(log_det_forward, -log_det_inverse)
    # perturbed coordinates: the fixed bonds still come out at exactly their lengths
    y, _ = constrained.forward(ic + 0.01 * torch.randn_like(ic))
    for atom, bond_ref, length in constrained.fixed_bonds:
        torch.testing.assert_close(torch.linalg.vector_norm(y[:, atom] - y[:, bond_ref], dim=-1), torch.full((4,), length, dtype=y.dtype))


def test_constrained_log_det_is_the_full_jacobian_at_the_constraint_lengths(tetrapeptide):
    """log|det| of the map (free coordinates with the fixed bonds held at r⁰) = autograd's log|det| of
    the full map at the assembled vector: the δ-constraint Cartesian measure (module docstring)."""
    system, x = tetrapeptide
    constrained = InternalCoordinateTransform.from_topology(system.topology, constraints=system.constraints)
    free = InternalCoordinateTransform.from_topology(system.topology)
    ic, _ = constrained.inverse(x[:1])
    full = constrained.full(ic)[0]
    jac = torch.autograd.functional.jacobian(lambda v: free_coordinates(free, free.forward(v[None])[0][0]), full)
    torch.testing.assert_close(constrained.log_det_forward(ic)[0], torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-9)


def test_a_constraint_that_is_not_a_zmatrix_bond_is_refused(aldp):
    from flowcg.errors import ConfigError

    with pytest.raises(ConfigError, match="between atoms 0 and 4 is not a bond of the Z-matrix"):
        InternalCoordinateTransform.from_topology(aldp.topology, constraints=[(0, 4, 0.2)])
