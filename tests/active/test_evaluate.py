"""The CG yardstick from biased walkers: positions kept by the walkers, resampled by weight, TICA on MD."""

import numpy as np
import pytest
import torch

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.evaluate import load_cg_reference, save_walker_cg_reference
from flowcg.coordinates.geometry import dihedral
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.io import save_npz_atomic
from flowcg.md.walkers import BiasedWalkers, WalkerSettings
from flowcg.targets import load_target
from flowcg.targets.systems import langevin_frames, load_system

SETTINGS = WalkerSettings(n_walkers=4, build_ps=0.1, deposit_fs=20, hill_height_kj_mol=2.0, equilibration_ps=0.02,
                          save_interval_fs=10, chunk_ps=0.03, seed=2, positions_every=3)


@pytest.fixture(scope="module")
def vacuum():
    return load_target("aldp_vacuum", dtype="float64")


def test_walkers_keep_positions_of_every_nth_frame_and_resume_them_exactly(vacuum, tmp_path):
    whole = BiasedWalkers(vacuum, tmp_path / "whole", SETTINGS)
    whole.run(0.1)  # 10 records of 4 walkers; positions at records 0, 3, 6, 9
    with np.load(tmp_path / "whole" / "positions.npz") as kept, np.load(tmp_path / "whole" / "reference.npz") as frames:
        assert kept["positions_nm"].shape == (16, 22, 3) and kept["frame"].tolist() == [r * 4 + w for r in (0, 3, 6, 9) for w in range(4)]
        phi_atoms = whole.torsion_atoms[0, 0]
        phi = dihedral(*(torch.as_tensor(kept["positions_nm"][:, a].astype(np.float64)) for a in phi_atoms.tolist())).numpy()
        np.testing.assert_allclose(phi, frames["phi"][kept["frame"]], atol=1e-4)  # each position is its frame's
        whole_positions = kept["positions_nm"].copy()
    BiasedWalkers(vacuum, tmp_path / "parts", SETTINGS).run(0.05)
    BiasedWalkers(vacuum, tmp_path / "parts", SETTINGS).run(0.1)
    with np.load(tmp_path / "parts" / "positions.npz") as kept:
        np.testing.assert_array_equal(kept["positions_nm"], whole_positions)


def test_walker_yardstick_resamples_by_weight_and_fits_tica_on_the_md(backbone, tmp_path):
    system = load_system("aldp_vacuum")
    md = langevin_frames(system, n_frames=120, steps_per_frame=20, seed=4, platform="Reference")
    time_series = tmp_path / "md_cg.npz"
    save_npz_atomic(time_series, cg_frames_nm=backbone.map_positions(md).astype(np.float32), bead_atoms=backbone.bead_atoms)
    walkers = tmp_path / "walkers"
    log_weight = np.full(40, -50.0)
    log_weight[[7, 21]] = [0.0, np.log(3.0)]  # two frames hold the mass, 1 : 3
    save_npz_atomic(walkers / "reference.npz", log_weight=log_weight)
    save_npz_atomic(walkers / "positions.npz", positions_nm=md[:40].astype(np.float32), frame=np.arange(40))
    path = save_walker_cg_reference(walkers, backbone, time_series, tmp_path / "walker_cg.npz", n_frames=400)
    transform = InternalCoordinateTransform.from_topology(system.topology)
    reference = load_cg_reference(path, backbone, TorsionBackmapper(transform, system.positions, backbone), lag_frames=5)
    picked = backbone.map_positions(md[[7, 21]])
    matches = [np.abs(reference.frames_nm - p).max(axis=(1, 2)) < 1e-5 for p in picked]
    assert matches[0].sum() == 100 and matches[1].sum() == 300  # systematic resampling: exact shares
    assert reference.tica is not None and len(reference.phi) == 400
    again = save_walker_cg_reference(walkers, backbone, path, tmp_path / "again.npz", n_frames=400)  # TICA frames carried over
    with np.load(again) as a, np.load(time_series) as md_frames:
        np.testing.assert_array_equal(a["tica_frames_nm"], md_frames["cg_frames_nm"])


class _ConstantForce(torch.nn.Module):
    """A CG 'model' whose force is the mean force plus a fixed offset (kJ/mol/nm)."""

    dtype = torch.float64

    def __init__(self, mean_force, offset: float):
        super().__init__()
        self.mean_force, self.offset = mean_force, offset

    def forces(self, x, create_graph=False):
        return self.mean_force(x) + self.offset


class _BasinTorsions:
    """(φ, ψ) of a frame read from its first bead: φ = −1.5 rad (β or αR by the sign of x) or +1 rad (αL)."""

    def torsions(self, x):
        x = torch.as_tensor(x)
        phi = torch.where(x[:, 0, 1] > 0, 1.0, -1.5)
        psi = torch.where(x[:, 0, 0] > 0, 2.5, -0.7)
        return torch.stack([phi, psi], dim=1)


def test_held_out_force_error_differences_are_mean_force_errors():
    """Labels F = F̄(X) + noise: a model off F̄ by δ per component scores δ² more than the exact mean force
    (the noise is common to both, module docstring of flowcg.active.evaluate); a committee scores its mean
    force; the per-basin losses split the rows by (φ, ψ)."""
    from flowcg.active.evaluate import held_out_force_error
    from flowcg.active.labels import Labels

    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=(n, 3, 3))
    mean_force = lambda positions: -2.0 * torch.as_tensor(positions)  # noqa: E731 (a harmonic mean force)
    forces = mean_force(x).numpy() + rng.normal(scale=5.0, size=x.shape)
    labels = Labels(np.zeros((n, 1, 3)), x, forces, np.ones(n), np.arange(n), np.zeros(n))
    exact = held_out_force_error([_ConstantForce(mean_force, 0.0)], labels, _BasinTorsions())
    off = held_out_force_error([_ConstantForce(mean_force, 0.5)], labels, _BasinTorsions())
    assert abs(exact["force_mse"] - 25.0) < 4 * exact["force_mse_se"]
    np.testing.assert_allclose(off["force_mse"] - exact["force_mse"], 0.25, atol=0.03)
    committee = held_out_force_error([_ConstantForce(mean_force, 1.0), _ConstantForce(mean_force, -1.0)], labels, _BasinTorsions())
    np.testing.assert_allclose(committee["force_mse"], exact["force_mse"], rtol=1e-12)
    assert exact["n_beta"] + exact["n_alpha_R"] + exact["n_alpha_L"] == n and min(exact["n_beta"], exact["n_alpha_L"]) > 4000
    np.testing.assert_allclose(exact["row_errors"].mean(), exact["force_mse"], rtol=1e-12)
