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
