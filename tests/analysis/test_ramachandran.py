import json
import math

import numpy as np
import pytest

from flowcg.analysis.marginals import marginal_kls
from flowcg.analysis.md_cost import load_md_series, md_cost_curve, md_speedup, md_steps_to_reach
from flowcg.analysis.molecular import Reference, load_reference, resolve_reference, shipped_reference
from flowcg.analysis.ramachandran import (
    RamachandranReference,
    basin_labels,
    basin_populations,
    plot_ramachandran,
    ramachandran_kl,
    ramachandran_metrics,
    ramachandran_tv,
)

WIDTH = 2 * math.pi / 64  # one bin of the 64×64 grid
EPS = 1e-10  # FAB, on densities


def centre(i):
    return -math.pi + (i + 0.5) * WIDTH


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return rng.uniform(-math.pi, math.pi, 5000), rng.uniform(-math.pi, math.pi, 5000)


def test_identical_sets_have_zero_divergence(samples):
    phi, psi = samples
    assert ramachandran_kl(phi, psi, phi, psi) == pytest.approx(0.0, abs=1e-12)
    assert ramachandran_tv(phi, psi, phi, psi, bins=100) == pytest.approx(0.0, abs=1e-12)


def test_kl_is_fabs_estimator():
    rng = np.random.default_rng(2)
    ref = rng.vonmises(-1.2, 2.0, (2, 3000))
    model = rng.vonmises(-1.0, 1.5, (2, 2000))
    # FAB's kld_ram, written out with numpy's density histograms.
    grid = dict(bins=64, range=[[-np.pi, np.pi], [-np.pi, np.pi]], density=True)
    h_ref, h_model = np.histogram2d(*ref, **grid)[0], np.histogram2d(*model, **grid)[0]
    expected = np.sum(h_ref * np.log((h_ref + EPS) / (h_model + EPS))) * WIDTH**2
    assert ramachandran_kl(*ref, *model) == pytest.approx(expected, rel=1e-10)


def test_shifted_case_matches_analytic_values():
    # Reference: half its mass in bin (10, 20), half in (11, 20). Model: shifted one bin along φ.
    ref_phi, model_phi = np.array([centre(10), centre(11)]), np.array([centre(11), centre(12)])
    psi = np.array([centre(20)] * 2)
    density = 0.5 / WIDTH**2  # of each occupied bin, rad⁻²
    # Bin (10, 20) has reference mass ½ and no model mass; (11, 20) matches; ε acts on densities.
    expected_kl = 0.5 * math.log((density + EPS) / EPS)
    assert ramachandran_kl(ref_phi, psi, model_phi, psi) == pytest.approx(expected_kl, rel=1e-12)
    assert ramachandran_tv(ref_phi, psi, model_phi, psi) == pytest.approx(0.5)


def test_weights_can_undo_a_bias(samples):
    phi, psi = samples
    # Model: the reference plus every point with ψ > 0 duplicated; weight ½ restores the reference.
    dup = psi > 0
    model_phi, model_psi = np.concatenate([phi, phi[dup]]), np.concatenate([psi, psi[dup]])
    weights = np.concatenate([np.where(dup, 0.5, 1.0), np.full(dup.sum(), 0.5)])
    assert ramachandran_tv(phi, psi, model_phi, model_psi) > 0.1
    assert ramachandran_kl(phi, psi, model_phi, model_psi, weights=weights) == pytest.approx(0.0, abs=1e-12)


def test_uniform_weights_give_full_ess(samples):
    phi, psi = samples
    metrics = ramachandran_metrics(RamachandranReference.from_frames(phi, psi), phi, psi, log_weights=np.zeros(phi.size))
    assert metrics["ess"] == pytest.approx(1.0) and metrics["ess_clipped"] == pytest.approx(1.0)
    assert metrics["kl_64_rw"] == pytest.approx(0.0, abs=1e-12)
    assert sum(metrics[f"basin_{b}"] for b in ("beta", "alpha_R", "alpha_L")) == pytest.approx(1.0)


def test_basin_assignment_of_hand_picked_points():
    points = {  # (φ, ψ) in degrees → basin
        (-80, 70): "beta",  # C7eq
        (-150, 155): "beta",  # C5
        (-75, 145): "beta",  # PII
        (-80, -150): "beta",  # extended, wrapped in ψ
        (170, 170): "beta",  # extended, wrapped in φ
        (-70, -40): "alpha_R",
        (-90, 0): "alpha_R",
        (60, 40): "alpha_L",
        (75, -65): "alpha_L",  # C7ax
    }
    phi, psi = np.radians(np.array(list(points))).T
    names = np.array(["beta", "alpha_R", "alpha_L"])
    assert names[basin_labels(phi, psi)].tolist() == list(points.values())
    pops = basin_populations(phi, psi, weights=np.arange(1, 10))
    assert pops["alpha_L"] == pytest.approx((8 + 9) / 45)


def test_marginal_kls():
    rng = np.random.default_rng(1)
    ref = np.stack([rng.normal(0.15, 0.01, 4000), rng.uniform(-math.pi, math.pi, 4000)], -1)
    kls = marginal_kls(ref, ref, np.array([False, True]))
    np.testing.assert_allclose(kls, 0.0, atol=1e-12)
    # A torsion model confined to ψ < 0 misses half the reference mass: KL ≈ ½ log(d/ε) in that half.
    model = ref.copy()
    model[:, 1] = -np.abs(model[:, 1])
    kls = marginal_kls(ref, model, np.array([False, True]))
    assert kls[0] == pytest.approx(0.0, abs=1e-12)
    assert kls[1] == pytest.approx(0.5 * math.log(1 / (2 * math.pi) / EPS), rel=0.05)


def test_md_cost_on_synthetic_series():
    # First half of the series sits in one bin, second half in another; the reference is an even mix.
    a, b = centre(5), centre(40)
    phi = np.array([a] * 500 + [b] * 500)
    psi = np.zeros(1000) + centre(32)
    reference = (np.array([a, b]), np.array([centre(32)] * 2))
    curve = md_cost_curve(phi, psi, steps_per_frame=100, reference=reference, n_points=40)
    assert curve.steps[-1] == 100_000 and curve.kl[-1] == pytest.approx(0.0, abs=1e-12)
    d = 0.5 / WIDTH**2
    early = 0.5 * math.log((d + EPS) / (2 * d + EPS)) + 0.5 * math.log((d + EPS) / EPS)
    assert curve.kl[0] == pytest.approx(early)
    assert md_steps_to_reach(1e-6, curve) == 100_000
    assert md_steps_to_reach(early, curve) == curve.steps[0]
    assert md_steps_to_reach(-1.0, curve) == math.inf
    # the compact reference shipped for a target (its bin masses) gives the same curve as its frames
    compact = md_cost_curve(phi, psi, steps_per_frame=100, reference=RamachandranReference.from_frames(*reference), n_points=40)
    np.testing.assert_allclose(compact.kl, curve.kl, rtol=1e-12, atol=1e-15)
    # the speed-up per model evaluation, or the series' length as a lower bound when it never gets there
    assert md_speedup(early, 1000, curve, "md")["md_speedup"] == curve.steps[0] / 1000
    never = md_speedup(-1.0, 1000, curve, "md")
    assert never["md_speedup"] is None and never["md_speedup_lower_bound"] == 100


def _walker_run(path, build_ps=0.0):
    """A walker run folder as flowcg-reference writes it: 3 walkers, 2 frames each, walker-major."""
    path.mkdir()
    walker, time_ps = np.array([0, 0, 1, 1, 2, 2]), np.array([0.25, 0.5] * 3)
    np.savez(path / "reference.npz", phi=walker + time_ps, psi=-time_ps, bias_kj_mol=np.zeros(6), log_weight=np.zeros(6),
             walker=walker, time_ps=time_ps)
    settings = {"build_ps": build_ps, "equilibration_ps": 0.0, "save_interval_fs": 250.0, "timestep_fs": 1.0, "n_walkers": 3}
    (path / "metrics.json").write_text(json.dumps({"settings": settings}))
    return path


def test_unbiased_walkers_load_as_a_time_major_series(tmp_path):
    series = load_md_series(_walker_run(tmp_path / "unbiased"))
    assert series.steps_per_frame == 250 and series.reference.is_time_series
    # every walker's first frame (t = 0.25 ps), then every walker's second: frame k closes k · 250 steps
    np.testing.assert_allclose(series.reference.phi, [0.25, 1.25, 2.25, 0.5, 1.5, 2.5])
    with pytest.raises(ValueError, match="unbiased walkers"):
        load_md_series(_walker_run(tmp_path / "biased", build_ps=20.0))


def test_plot_writes_png(samples, tmp_path):
    phi, psi = samples
    path = plot_ramachandran(tmp_path / "rama.png", (phi, psi), (phi, psi), log_weights=-np.abs(psi))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compact_reference_scores_like_its_frames_and_round_trips(samples, tmp_path):
    phi, psi = samples
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.5, 1.5, phi.size)
    model_phi, model_psi = rng.vonmises(-1.5, 1.0, (2, 4000))
    compact = RamachandranReference.from_frames(phi, psi, weights, temperature_K=300.0, description="test",
                                                halves=np.arange(phi.size) % 2 == 0)
    assert compact.noise_floor["kl_64"] > 0 and compact.noise_floor["tv_100"] > 0
    compact.save(tmp_path / "ref.npz")
    loaded = load_reference(tmp_path / "ref.npz")
    assert isinstance(loaded, RamachandranReference) and loaded.temperature_K == 300.0 and loaded.description == "test"
    assert loaded.noise_floor == pytest.approx(compact.noise_floor) and loaded.basins == pytest.approx(compact.basins)
    metrics = ramachandran_metrics(loaded, model_phi, model_psi)
    assert metrics["kl_64"] == pytest.approx(ramachandran_kl(phi, psi, model_phi, model_psi, ref_weights=weights), rel=1e-12)
    assert metrics["tv_100"] == pytest.approx(ramachandran_tv(phi, psi, model_phi, model_psi, bins=100, ref_weights=weights), rel=1e-12)
    assert metrics["ref_floor_kl_64"] == compact.noise_floor["kl_64"]
    assert plot_ramachandran(tmp_path / "plot.png", (model_phi, model_psi), loaded).is_file()


class _Molecule:
    name, temperature, topology = "aldp_implicit", 300.0, object()


def test_reference_setting_picks_the_shipped_walkers_by_default(samples, tmp_path):
    shipped = shipped_reference("aldp_implicit", 300.0)
    assert shipped is not None and shipped.temperature_K == 300.0 and "walkers" in shipped.description
    assert shipped_reference("aldp_implicit", 350.0) is None  # another temperature is another ensemble
    assert resolve_reference("auto", _Molecule()).masses[64] == pytest.approx(shipped.masses[64])
    assert resolve_reference(None, _Molecule()) is None and resolve_reference("none", _Molecule()) is None
    np.savez(tmp_path / "md.npz", phi=samples[0], psi=samples[1])
    assert isinstance(resolve_reference(str(tmp_path / "md.npz"), _Molecule()), Reference)
