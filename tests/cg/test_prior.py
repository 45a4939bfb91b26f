import math

import numpy as np
import pytest
import torch

from flowcg.cg.prior import (CGPrior, FourierDihedralPairs, FourierDihedrals, HarmonicBonds, Repulsion, consecutive_dihedral_pairs,
                             fit_fourier_dihedral_pair, fit_prior, invert_dihedral_terms)
from flowcg.coordinates.geometry import bond_angle, dihedral
from flowcg.errors import ConfigError
from flowcg.units import kT

TEMPERATURE = 300.0
KT = kT(TEMPERATURE)
BOND_X0 = np.array([0.133, 0.146, 0.152, 0.133])  # nm
BOND_K = np.array([3.0e5, 2.0e5, 1.5e5, 2.5e5])  # kJ/mol/nm²
ANGLE_X0 = np.array([2.12, 1.94, 2.03])  # rad
ANGLE_K = np.array([400.0, 250.0, 600.0])  # kJ/mol/rad²


def place(a, b, c, bond, angle, torsion):
    """Atom d with |cd| = bond, ∠bcd = angle and dihedral(a, b, c, d) = torsion (NeRF), batched."""
    bc = c - b
    bc /= np.linalg.norm(bc, axis=-1, keepdims=True)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    m = np.cross(n, bc)
    local = np.stack([-np.cos(angle), np.sin(angle) * np.cos(torsion), np.sin(angle) * np.sin(torsion)], axis=-1)
    return c + bond[:, None] * (local[:, :1] * bc + local[:, 1:2] * m + local[:, 2:] * n)


def chain_frames(n_frames, seed=0, phi_sampler=None, torsion_sampler=None):
    """5-bead chains with bonds ~ N(x0, kT/k), angles ~ N(θ0, kT/k), given or uniform dihedrals
    (``phi_sampler``: φ alone; ``torsion_sampler``: (φ, ψ) together, (n, 2))."""
    rng = np.random.default_rng(seed)
    bonds = BOND_X0 + rng.standard_normal((n_frames, 4)) * np.sqrt(KT / BOND_K)
    angles = ANGLE_X0 + rng.standard_normal((n_frames, 3)) * np.sqrt(KT / ANGLE_K)
    torsions = rng.uniform(-math.pi, math.pi, (n_frames, 2))
    if phi_sampler is not None:
        torsions[:, 0] = phi_sampler(rng, n_frames)
    if torsion_sampler is not None:
        torsions = torsion_sampler(rng, n_frames)
    x = np.zeros((n_frames, 5, 3))
    x[:, 1, 0] = bonds[:, 0]
    x[:, 2, 0] = bonds[:, 0] - bonds[:, 1] * np.cos(angles[:, 0])
    x[:, 2, 1] = bonds[:, 1] * np.sin(angles[:, 0])
    for k in (3, 4):
        x[:, k] = place(x[:, k - 3], x[:, k - 2], x[:, k - 1], bonds[:, k - 1], angles[:, k - 2], torsions[:, k - 3])
    return x, bonds, angles, torsions


def test_chain_generator_is_consistent():
    x, bonds, angles, torsions = chain_frames(50)
    t = torch.as_tensor(x)
    np.testing.assert_allclose(HarmonicBonds.coordinates(t, torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])), bonds)
    np.testing.assert_allclose(bond_angle(t[:, 1], t[:, 2], t[:, 3]), angles[:, 1])
    np.testing.assert_allclose(dihedral(t[:, 1], t[:, 2], t[:, 3], t[:, 4]), torsions[:, 1], atol=1e-10)


def test_boltzmann_inversion_recovers_harmonic_parameters(backbone):
    x, *_ = chain_frames(40000)
    prior = fit_prior(x, backbone, TEMPERATURE)
    assert set(prior.terms) == {"bonds", "angles", "repulsion"}
    bonds, angles = prior.terms["bonds"], prior.terms["angles"]
    np.testing.assert_allclose(bonds.x0.numpy(), BOND_X0, rtol=1e-3)
    np.testing.assert_allclose(bonds.k.numpy(), BOND_K, rtol=0.03)
    np.testing.assert_allclose(angles.x0.numpy(), ANGLE_X0, rtol=1e-3)
    np.testing.assert_allclose(angles.k.numpy(), ANGLE_K, rtol=0.03)


def test_prior_energy_terms(backbone):
    x, bonds, angles, _ = chain_frames(2000, seed=1)
    prior = fit_prior(x, backbone, TEMPERATURE, repulsion_group="pair").double()
    t = torch.as_tensor(x[:5])
    terms = prior.energies(t)
    b, a = prior.terms["bonds"], prior.terms["angles"]
    expected_bonds = 0.5 * (b.k * (torch.as_tensor(bonds[:5]) - b.x0) ** 2).sum(-1)
    expected_angles = 0.5 * (a.k * (torch.as_tensor(angles[:5]) - a.x0) ** 2).sum(-1)
    torch.testing.assert_close(terms["bonds"], expected_bonds)
    torch.testing.assert_close(terms["angles"], expected_angles)
    torch.testing.assert_close(prior(t), sum(terms.values()))
    # Each non-bonded pair's σ is its closest approach, where it costs ε = 1 kT.
    repulsion = prior.terms["repulsion"]
    assert repulsion.pairs.tolist() == backbone.nonbonded_pairs().tolist()
    distances = HarmonicBonds.coordinates(torch.as_tensor(x), repulsion.pairs)
    torch.testing.assert_close(repulsion.sigma, distances.min(0).values)
    assert repulsion.epsilon == pytest.approx(KT)
    # The mean harmonic energy per term is ½ kT (equipartition over the data it was fitted on).
    full = torch.as_tensor(x)
    assert prior.terms["bonds"](full).mean().item() == pytest.approx(4 * 0.5 * KT, rel=1e-6)


def test_repulsion_groupings(backbone):
    x, *_ = chain_frames(500, seed=2)
    pairs = backbone.nonbonded_pairs()
    minimum = HarmonicBonds.coordinates(torch.as_tensor(x), torch.as_tensor(pairs)).min(0).values
    by_all = fit_prior(x, backbone, TEMPERATURE, repulsion_group="all").terms["repulsion"].sigma
    assert torch.allclose(by_all, torch.full_like(by_all, float(minimum.min())))
    # Pairs (C, C) = (0, 3), (C, N) = (0, 4), (N, N) = (1, 4): three different type pairs.
    by_type = fit_prior(x, backbone, TEMPERATURE).terms["repulsion"].sigma
    torch.testing.assert_close(by_type, minimum.float())
    fixed = fit_prior(x, backbone, TEMPERATURE, repulsion_sigma_nm=0.3).terms["repulsion"]
    assert torch.allclose(fixed.sigma, torch.tensor(0.3))
    r = torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]])
    assert Repulsion([[0, 1]], [0.3], 2.0)(r).item() == pytest.approx(2.0)
    assert "repulsion" not in fit_prior(x, backbone, TEMPERATURE, repulsion=False).terms


def fourier_profile(energy, angles, n_terms=3):
    """Least-squares cos nθ, sin nθ coefficients (n = 1 … N, per column of ``angles``) of an energy over the frames."""
    n = np.arange(1, n_terms + 1)
    features = [f(np.outer(column, n)) for column in angles.T for f in (np.cos, np.sin)]
    coefficients, *_ = np.linalg.lstsq(np.concatenate([np.ones((len(energy), 1)), *features], axis=1), energy, rcond=None)
    return coefficients[1:].reshape(len(angles.T), 2, n_terms)


def test_dihedral_prior_fits_a_von_mises_free_energy(backbone):
    """Along the dihedrals, the whole prior (dihedral terms + what the repulsion of beads 0–3, 1–4, 0–4
    already charges there) is the frames' free energy; without the repulsion, the dihedral term alone."""
    mu, kappa = 1.0, 2.0  # p(φ) ∝ exp(κ cos(φ − μ)) ⇒ F(φ) = −kT κ (cos μ cos φ + sin μ sin φ)
    x, _, _, torsions = chain_frames(40000, seed=3, phi_sampler=lambda rng, n: rng.vonmises(mu, kappa, n))
    expected = np.zeros((2, 2, 3))
    expected[0, :, 0] = -KT * kappa * np.array([math.cos(mu), math.sin(mu)])  # ψ was uniform: flat
    for repulsion in (False, True):
        prior = fit_prior(x, backbone, TEMPERATURE, dihedrals="boltzmann", dihedral_terms=3, repulsion=repulsion).double()
        total = fourier_profile(prior(torch.as_tensor(x)).detach().numpy(), torsions)
        np.testing.assert_allclose(total, expected, atol=0.05 * KT * kappa)
        if not repulsion:
            term = prior.terms["dihedrals"]
            np.testing.assert_allclose(np.stack([term.a.numpy(), term.b.numpy()], axis=1), expected, atol=0.05 * KT * kappa)
    # the repulsion's own share along φ is not negligible, so the second pass tests the correction
    share = fourier_profile(prior.terms["repulsion"](torch.as_tensor(x)).detach().numpy(), torsions)
    assert np.abs(share).max() > 0.1 * KT


def test_reinversion_with_a_network_keeps_the_frames_dihedral_marginal(backbone):
    """A learned energy that depends on φ (here 1.5 kT cos 2φ): after invert_dihedral_terms with it, the
    whole model along φ (dihedral terms + repulsion + that energy) is the frames' free energy again,
    and the dihedral term alone has taken the learned energy's share off."""
    mu, kappa = 1.0, 2.0
    x, _, _, torsions = chain_frames(40000, seed=5, phi_sampler=lambda rng, n: rng.vonmises(mu, kappa, n))
    expected = np.zeros((2, 2, 3))
    expected[0, :, 0] = -KT * kappa * np.array([math.cos(mu), math.sin(mu)])
    prior = fit_prior(x, backbone, TEMPERATURE, dihedrals="boltzmann", dihedral_terms=3).double()
    network = 1.5 * KT * np.cos(2 * torsions[:, 0])
    before = prior.terms["dihedrals"].a.clone()
    ess = invert_dihedral_terms(prior, x, TEMPERATURE, network)
    assert 0.1 < ess <= 1.0
    total = fourier_profile(prior(torch.as_tensor(x)).detach().numpy() + network, torsions)
    np.testing.assert_allclose(total, expected, atol=0.05 * KT * kappa)
    shift = (prior.terms["dihedrals"].a - before).numpy()
    assert shift[0, 1] == pytest.approx(-1.5 * KT, abs=0.1 * KT)  # the cos 2φ coefficient gave the network's share back
    with pytest.raises(ValueError, match="network energies"):
        invert_dihedral_terms(prior, x, TEMPERATURE, network[:10])


def test_prior_fit_rejects_bad_input(backbone):
    with pytest.raises(ValueError, match="CG frames"):
        fit_prior(np.zeros((10, 4, 3)), backbone, TEMPERATURE)
    frozen = np.repeat(chain_frames(1)[0], 3, axis=0)
    with pytest.raises(ValueError, match="does not fluctuate"):
        fit_prior(frozen, backbone, TEMPERATURE)
    assert isinstance(fit_prior(chain_frames(10)[0], backbone, TEMPERATURE, bonds=False, angles=False), CGPrior)


def test_the_dihedral_prior_tells_a_frame_from_its_mirror_image(backbone):
    """Bead distances (all CGSchNet sees) are those of the mirror image too; the signed dihedral
    terms are not: a prior fitted to right-handed frames (φ < 0) costs more for their mirror images."""
    x, *_ = chain_frames(20000, seed=5, phi_sampler=lambda rng, n: rng.vonmises(-1.2, 4.0, n))
    mirror = x * np.array([1.0, 1.0, -1.0])
    chiral = fit_prior(x, backbone, TEMPERATURE, dihedrals="boltzmann")
    achiral = fit_prior(x, backbone, TEMPERATURE, dihedrals="none")
    frames, mirrored = torch.as_tensor(x[:500]), torch.as_tensor(mirror[:500])
    torch.testing.assert_close(achiral(frames), achiral(mirrored))  # distances and angles only: blind to handedness
    assert float((chiral(mirrored) - chiral(frames)).mean()) > 5 * KT


def test_learned_dihedral_terms_recover_a_fourier_potential_by_force_matching(backbone):
    """``dihedrals="learned"``: zero coefficients that force matching fits. Frames from one basin
    only (φ ≈ −1.2, where inversion would charge the rest of the circle) and forces of a known
    dihedral potential plus the harmonic terms: the learned coefficients are that potential's."""
    x, *_ = chain_frames(1000, seed=7, phi_sampler=lambda rng, n: rng.vonmises(-1.2, 4.0, n))
    frames = torch.as_tensor(x)
    fixed = fit_prior(x, backbone, TEMPERATURE, dihedrals="none")
    truth = FourierDihedrals(backbone.dihedrals, [[3.0, -1.0, 0.5], [0.0, 0.0, 0.0]], [[-2.0, 0.8, 0.0], [1.0, 0.0, 0.0]])
    with torch.enable_grad():
        positions = frames.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad((fixed(positions) + truth(positions)).sum(), positions)
    learned = fit_prior(x, backbone, TEMPERATURE, dihedrals="learned")
    term = learned.terms["dihedrals"]
    assert [name for name, _ in learned.named_parameters()] == ["terms.dihedrals.a", "terms.dihedrals.b"]
    assert float(term.a.detach().abs().sum() + term.b.detach().abs().sum()) == 0.0
    torch.testing.assert_close(learned.fixed_energy(frames), fixed(frames))  # the learned term is not "fixed"
    optimizer = torch.optim.LBFGS(learned.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def force_matching_loss():  # quadratic in the coefficients: L-BFGS solves it in a few dozen iterations
        optimizer.zero_grad()
        positions = frames.clone().requires_grad_(True)
        (predicted,) = torch.autograd.grad(learned(positions).sum(), positions, create_graph=True)
        loss = ((predicted - gradient) ** 2).mean()
        loss.backward()
        return loss

    optimizer.step(force_matching_loss)
    # φ (first dihedral) is confined to one basin, so only its force profile there is determined;
    # ψ is uniform and pins its coefficients.
    phi_grid = torch.linspace(-2.0, -0.4, 50)
    n = torch.arange(1, 4)
    def profile(a, b):
        return (a[0] * torch.cos(phi_grid[:, None] * n) + b[0] * torch.sin(phi_grid[:, None] * n)).sum(-1)
    fitted, exact = profile(term.a.detach(), term.b.detach()), profile(truth.a, truth.b)
    torch.testing.assert_close(fitted - fitted.mean(), exact - exact.mean(), atol=0.05, rtol=0)
    torch.testing.assert_close(term.a.detach()[1], truth.a[1], atol=0.05, rtol=0)
    torch.testing.assert_close(term.b.detach()[1], truth.b[1], atol=0.05, rtol=0)


def test_unknown_dihedral_mode_is_a_config_error(backbone):
    with pytest.raises(ConfigError, match="unknown dihedral prior"):
        fit_prior(chain_frames(10)[0], backbone, TEMPERATURE, dihedrals="yes")


def coupled_torsions(kappa, mu):
    """(φ, ψ) with p ∝ exp(κ cos(φ − ψ − μ)): ψ uniform, φ − ψ von Mises; F = −kT κ cos(φ − ψ − μ)."""
    def sample(rng, n):
        psi = rng.uniform(-math.pi, math.pi, n)
        return np.stack([np.angle(np.exp(1j * (psi + rng.vonmises(mu, kappa, n)))), psi], axis=1)
    return sample


def test_the_2d_dihedral_fit_recovers_a_coupled_free_energy():
    kappa, mu = 2.0, 0.5
    torsions = coupled_torsions(kappa, mu)(np.random.default_rng(0), 40000)
    orders, a, b = fit_fourier_dihedral_pair(torsions[:, 0], torsions[:, 1], KT, n_terms=3)
    k = [tuple(o) for o in orders].index((1, -1))  # cos(φ − ψ − μ) = cos μ cos(φ − ψ) + sin μ sin(φ − ψ)
    assert a[k] == pytest.approx(-KT * kappa * math.cos(mu), rel=0.05)
    assert b[k] == pytest.approx(-KT * kappa * math.sin(mu), rel=0.05)
    others = np.delete(np.r_[a, b], [k, len(a) + k])
    assert np.abs(others).max() < 0.05 * KT * kappa


def test_boltzmann_2d_couples_phi_and_psi_where_1d_terms_cannot(backbone):
    """Frames whose φ and ψ are each uniform but locked together: the 1-D terms are flat, the pair term
    charges a frame with φ − ψ far from μ by ≈ 2 κ kT, as the true free energy does."""
    assert consecutive_dihedral_pairs(backbone.dihedrals) == ([(0, 1)], [])
    kappa, mu = 3.0, 0.0
    x, *_ = chain_frames(30000, seed=7, torsion_sampler=coupled_torsions(kappa, mu))
    coupled = fit_prior(x, backbone, TEMPERATURE, dihedrals="boltzmann_2d", repulsion=False)
    separate = fit_prior(x, backbone, TEMPERATURE, dihedrals="boltzmann", repulsion=False)
    assert isinstance(coupled.terms["dihedral_pairs"], FourierDihedralPairs) and "dihedrals" not in coupled.terms
    locked, unlocked = (chain_frames(1, seed=1, torsion_sampler=lambda rng, n: np.array([[t, 0.0]]))[0] for t in (0.0, math.pi))
    frames = torch.as_tensor(np.concatenate([locked, unlocked]))
    pair_gap = float(coupled.terms["dihedral_pairs"](frames[1:]) - coupled.terms["dihedral_pairs"](frames[:1]))
    assert pair_gap == pytest.approx(2 * kappa * KT, rel=0.1)
    single_gap = float(separate.terms["dihedrals"](frames[1:]) - separate.terms["dihedrals"](frames[:1]))
    assert abs(single_gap) < 0.3 * KT
