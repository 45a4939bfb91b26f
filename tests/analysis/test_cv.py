"""CV discovery: the linear–circular correlation and TICA against known answers."""

import math

import numpy as np
import pytest

from flowcg.analysis.cv import cv_discovery, cv_markdown, fit_tica, linear_circular_correlation, torsion_features


def test_linear_circular_correlation_known_cases():
    rng = np.random.default_rng(0)
    tau = rng.uniform(-math.pi, math.pi, 20_000)
    assert linear_circular_correlation(np.cos(tau - 1.0), tau) == pytest.approx(1.0, abs=1e-9)  # any phase
    assert linear_circular_correlation(rng.normal(size=tau.size), tau) < 0.03
    # z = sin τ + noise of equal variance: R = corr = sqrt(0.5 / (0.5 + 0.5))
    assert linear_circular_correlation(np.sin(tau) + rng.normal(scale=math.sqrt(0.5), size=tau.size), tau) == pytest.approx(math.sqrt(0.5), abs=0.02)


def _two_state_series(n=20_000, seed=1):
    """φ hops between −2 and +1 rad every ~500 frames (slow); ψ is fast noise around 2.5 rad."""
    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.random(n) < 1 / 500) % 2
    phi = np.where(state == 0, -2.0, 1.0) + rng.normal(scale=0.2, size=n)
    psi = 2.5 + rng.normal(scale=0.4, size=n)
    return phi, psi


def test_tica_finds_the_slow_torsion():
    phi, psi = _two_state_series()
    tics = fit_tica(phi, psi, lag_frames=10).transform(torsion_features(phi, psi))
    assert linear_circular_correlation(tics[:, 0], phi) > 0.95
    assert linear_circular_correlation(tics[:, 0], psi) < 0.2


def test_cv_discovery_report_names_the_torsion_a_latent_encodes():
    phi, psi = _two_state_series()
    rng = np.random.default_rng(2)
    z_slow = np.stack([np.sin(phi + 0.3), rng.normal(size=phi.size)], axis=1)
    report = cv_discovery(z_slow, np.stack([phi, psi], 1), ["phi", "psi"], np.zeros(phi.size), phi, psi, reference=(phi, psi))
    assert report["latents"][0]["best_torsions"][0][0] == "phi"
    assert abs(report["tica"]["tics"][0]["corr_slow_latents"][0]) > 0.9
    assert "z_slow[0]: best explains phi" in cv_markdown(report)


def test_peptide_tica_uses_every_residue_and_finds_the_slow_one():
    """Two residues: residue 2's φ is the slow hop, residue 1 is fast noise; TICA on the 8 features
    puts TIC 0 on φ2, and the report names it per residue."""
    from flowcg.analysis.molecular import Reference, per_residue_references

    slow_phi, fast_psi = _two_state_series(seed=3)
    rng = np.random.default_rng(4)
    phi = np.stack([-1.2 + rng.normal(scale=0.3, size=slow_phi.size), slow_phi], axis=1)
    psi = np.stack([2.0 + rng.normal(scale=0.3, size=slow_phi.size), fast_psi], axis=1)
    assert torsion_features(phi, psi).shape == (slow_phi.size, 8)
    np.testing.assert_array_equal(torsion_features(phi[:, 1], psi[:, 1]), torsion_features(phi, psi)[:, 4:])
    z_slow = np.stack([np.sin(slow_phi + 0.3), rng.normal(size=slow_phi.size)], axis=1)
    report = cv_discovery(z_slow, phi, ["phi1", "phi2"], np.zeros(slow_phi.size), phi, psi, reference=(phi, psi))
    tic0 = report["tica"]["tics"][0]
    assert max(tic0["corr_phi_psi_reference"], key=tic0["corr_phi_psi_reference"].get) == "phi2"
    assert abs(tic0["corr_slow_latents"][0]) > 0.9 and report["tica"]["features"][4:6] == ["cos_phi2", "sin_phi2"]
    assert "R(psi2) ref" in cv_markdown(report)
    split = per_residue_references(Reference(phi, psi), 2)
    np.testing.assert_array_equal(split[1].phi, slow_phi)


def test_circular_latents_are_compared_on_the_circle():
    """A latent equal to a torsion whose basin straddles the cut at ±π: ρ₁ = 1, Mardia's R is not."""
    from flowcg.analysis.cv import circular_circular_correlation

    rng = np.random.default_rng(5)
    tau = np.angle(np.exp(1j * (math.pi + rng.normal(scale=0.6, size=20_000))))
    assert circular_circular_correlation(tau, tau) == pytest.approx(1.0, abs=1e-9)
    assert circular_circular_correlation(-tau, tau) == pytest.approx(1.0, abs=1e-9)  # a reflection is as good
    assert linear_circular_correlation(tau, tau) < 0.95
    assert circular_circular_correlation(rng.uniform(-math.pi, math.pi, tau.size), tau) < 0.05
    report = cv_discovery(tau[:, None], tau[:, None], ["psi"], np.zeros(tau.size), tau, tau, periodic_latents=True)
    assert report["latents"][0]["best_torsions"][0][1] == pytest.approx(1.0, abs=1e-9) and "circular-circular" in cv_markdown(report)
