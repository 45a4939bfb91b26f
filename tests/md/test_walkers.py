"""Biased multiple-walker reference sampling on aldp_vacuum: frames, weights, exact resume, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowcg.analysis.molecular import load_reference
from flowcg.md.walkers import BiasedWalkers, WalkerSettings
from flowcg.targets import load_target

SETTINGS = WalkerSettings(n_walkers=4, build_ps=0.2, deposit_fs=20, hill_height_kj_mol=2.0, equilibration_ps=0.05,
                          save_interval_fs=10, chunk_ps=0.05, seed=5)


@pytest.fixture(scope="module")
def target():
    return load_target("aldp_vacuum", dtype="float64")


def test_walkers_record_weighted_frames_and_resume_exactly(target, tmp_path):
    whole = BiasedWalkers(target, tmp_path / "whole", SETTINGS)
    metrics = whole.run(0.1)
    assert metrics["frames"] == 4 * 10 and metrics["walkers_live"] == 4
    assert metrics["ps_per_walker"] == {"build": 0.2, "equilibrate": 0.05, "production": 0.1}
    assert metrics["bias_max_kj_mol"] > 0 and 0 < metrics["weight_ess"] <= 1

    reference = load_reference(tmp_path / "whole")
    with np.load(tmp_path / "whole" / "reference.npz") as data:
        # log w = V / kT, and the recorded bias is the frozen bias at the recorded torsions
        np.testing.assert_allclose(data["log_weight"], data["bias_kj_mol"].astype(np.float64) / target.kT)
        frozen = whole.bias(*(torch.as_tensor(data[k].astype(np.float64)) for k in ("phi", "psi"))).numpy()
        np.testing.assert_allclose(data["bias_kj_mol"], frozen, rtol=1e-5, atol=1e-4)
        assert sorted(set(data["walker"].tolist())) == [0, 1, 2, 3]
    assert not reference.is_time_series and reference.weights.sum() == pytest.approx(1.0)
    compact = load_reference(tmp_path / "whole" / "ramachandran_reference.npz")  # the shippable yardstick
    assert compact.basins == pytest.approx({k[len("basin_"):]: v for k, v in metrics.items() if k.startswith("basin_") and not k.endswith("_half")})
    assert compact.noise_floor["kl_64"] == metrics["kl_64_walker_halves"] and compact.temperature_K == target.temperature
    assert metrics["kl_64_time_halves"] >= 0
    for half in ("first", "second"):  # a weighted share: 1 up to round-off when every frame is in β
        assert 0 <= metrics[f"basin_beta_{half}_half"] <= 1 + 1e-12

    # A run stopped part-way and resumed (twice: inside the build and inside production) matches.
    BiasedWalkers(target, tmp_path / "parts", SETTINGS).run(0.04)
    resumed = BiasedWalkers(target, tmp_path / "parts", SETTINGS)
    assert resumed.steps_done["production"] == 40
    resumed.run(0.1)
    with np.load(tmp_path / "whole" / "reference.npz") as a, np.load(tmp_path / "parts" / "reference.npz") as b:
        for key in ("phi", "psi", "bias_kj_mol", "walker", "time_ps"):
            np.testing.assert_array_equal(a[key], b[key])

    with pytest.raises(ValueError, match="settings differ.*n_walkers"):
        BiasedWalkers(target, tmp_path / "parts", WalkerSettings(n_walkers=8))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="bias_factor"):
        WalkerSettings(bias_factor=1.0)
    with pytest.raises(ValueError, match="n_walkers"):
        WalkerSettings(n_walkers=0)


def test_cli_method_walkers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "flowcg.cli.reference", "target=aldp_vacuum", f"hydra.run.dir={tmp_path}"]
    overrides = ["method=walkers", "walkers.n_walkers=2", "walkers.compile=false", "walkers.build_ps=0.05", "walkers.deposit_fs=10",
                 "walkers.equilibration_ps=0.01", "walkers.save_interval_fs=10", "walkers.chunk_ps=0.02", "walkers.production_ps=0.03"]
    subprocess.run([*base, *overrides], check=True, env=env, capture_output=True, timeout=600)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["frames"] == 2 * 3 and metrics["backend"] == "torch"
    bad = subprocess.run([*base, "method=replica_exchange"], env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown method 'replica_exchange'" in bad.stderr


def test_peptide_walkers_bias_every_residue_and_keep_the_constraints(tmp_path):
    """Ace-(Ala)3-Nme with X–H bonds constrained: one bias per residue, the constraints held through
    SHAKE/RATTLE, and a per-residue reference with its noise floor."""
    from flowcg.analysis.ramachandran import RamachandranReference

    peptide = load_target("ala4_implicit", dtype="float64")
    walkers = BiasedWalkers(peptide, tmp_path, SETTINGS)
    metrics = walkers.run(0.05)
    assert walkers.n_residues == 3 and metrics["walkers_live"] == 4 and metrics["frames"] == 4 * 5
    assert all(0 < sum(metrics[f"res{k}_basin_{b}"] for b in ("beta", "alpha_R", "alpha_L")) <= 1 + 1e-9 for k in (1, 2, 3))
    assert all(b.coefficients.abs().sum() > 0 for b in walkers.biases)  # every residue's bias grew
    assert float(walkers.integrator.constraints.violation(walkers.x).max()) < 1e-10
    with np.load(tmp_path / "reference.npz") as data:
        assert data["phi"].shape == data["psi"].shape == (20, 3)
        frozen = walkers.bias(*(torch.as_tensor(data[k].astype(np.float64)) for k in ("phi", "psi"))).numpy()
        np.testing.assert_allclose(data["bias_kj_mol"], frozen, rtol=1e-5, atol=1e-4)
    for k in (1, 2, 3):
        reference = RamachandranReference.load(tmp_path / f"ramachandran_reference_residue{k}.npz")
        assert f"residue {k} of 3" in reference.description
    assert np.load(tmp_path / "bias.npy").shape == (3, 2 * SETTINGS.fourier_order + 1, 2 * SETTINGS.fourier_order + 1)


def test_walkers_rebalance_threads_at_every_commit(target, tmp_path, monkeypatch):
    """A run of hours must take up the cores another flowcg process leaves (flowcg.threads)."""
    import flowcg.md.walkers

    calls = []
    monkeypatch.setattr(flowcg.md.walkers, "rebalance", lambda: calls.append(1))
    BiasedWalkers(target, tmp_path, SETTINGS).run(0.1)
    assert len(calls) >= 4  # the build, the equilibration and two production chunks each commit
