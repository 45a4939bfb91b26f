import json
import os
import subprocess
import sys

import mdtraj as md
import numpy as np
import pytest

from flowcg.md.openmm_run import ReferenceRun
from flowcg.targets.systems import load_system

SETTINGS = dict(save_interval_fs=100, chunk_ps=1.0, equilibration_ps=0.5, threads=1, seed=3)
OVERRIDES = [f"{k}={v}" for k, v in SETTINGS.items()]


def cli(run_dir, ns):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flowcg.cli.reference", "target=aldp_vacuum", f"ns={ns}", f"hydra.run.dir={run_dir}"]
    subprocess.run([*cmd, *OVERRIDES], check=True, env=env, capture_output=True, timeout=600)
    with np.load(run_dir / "reference.npz") as data:
        return {k: data[k] for k in data.files}, json.loads((run_dir / "metrics.json").read_text())


def test_reference_run_resumes_exactly(tmp_path):
    run_dir = tmp_path / "run"
    first, metrics = cli(run_dir, 0.002)
    assert metrics["frames"] == 20 and metrics["ns"] == 0.002
    second, metrics = cli(run_dir, 0.004)
    assert metrics["frames"] == 40 and metrics["frames_this_session"] == 20 and metrics["steps_per_s"] > 0
    np.testing.assert_array_equal(second["phi"][:20], first["phi"])

    # Outputs are readable by mdtraj and agree with the per-frame records.
    traj = md.load(str(run_dir / "trajectory.dcd"), top=str(run_dir / "topology.pdb"))
    assert traj.n_frames == 40
    np.testing.assert_allclose(md.compute_phi(traj)[1][:, 0], second["phi"], atol=1e-4)
    np.testing.assert_allclose(md.compute_psi(traj)[1][:, 0], second["psi"], atol=1e-4)

    # Resuming reproduces an uninterrupted run of the same seed bit for bit.
    whole = ReferenceRun(load_system("aldp_vacuum"), tmp_path / "whole", **SETTINGS)
    whole.run(0.004)
    np.testing.assert_array_equal(whole.records["energy"], second["energy"])


def test_resume_trims_uncommitted_frames(tmp_path):
    system = load_system("aldp_vacuum")
    ReferenceRun(system, tmp_path, **SETTINGS).run(0.001)
    # Simulate a crash after the DCD append but before the commit: extra frames in the DCD only.
    traj = md.load(str(tmp_path / "trajectory.dcd"), top=str(tmp_path / "topology.pdb"))
    traj[:3].save_dcd(str(tmp_path / "extra.dcd"))
    md.join([traj, md.load(str(tmp_path / "extra.dcd"), top=traj.topology)]).save_dcd(str(tmp_path / "trajectory.dcd"))
    run = ReferenceRun(system, tmp_path, **SETTINGS)
    assert md.load(str(tmp_path / "trajectory.dcd"), top=str(tmp_path / "topology.pdb")).n_frames == run.n_frames == 10
    run.run(0.002)
    assert md.load(str(tmp_path / "trajectory.dcd"), top=str(tmp_path / "topology.pdb")).n_frames == 20


def test_bad_input_fails_with_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for overrides, message in ((["target=aldp_vacuum", "ns=-1"], "ns must be positive"), (["target=aldp_vacuum", "platform=Quantum"], "Quantum")):
        cmd = [sys.executable, "-m", "flowcg.cli.reference", *overrides, f"hydra.run.dir={tmp_path / 'bad'}"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0 and message in result.stderr
        assert "Traceback" not in result.stderr


def test_peptide_reference_run_records_every_residue(tmp_path):
    from flowcg.analysis.ramachandran import RamachandranReference, residue_phi_psi

    system = load_system("ala4_implicit")
    ReferenceRun(system, tmp_path, **SETTINGS).run(0.001)
    run = ReferenceRun(system, tmp_path, **SETTINGS)  # resumed
    metrics = run.run(0.002)
    assert run.records["phi"].shape == run.records["psi"].shape == (20, 3)
    traj = md.load(str(tmp_path / "trajectory.dcd"), top=str(tmp_path / "topology.pdb"))
    phi, psi = residue_phi_psi(traj.xyz.astype(np.float64), system.topology)
    np.testing.assert_allclose(phi, run.records["phi"], atol=1e-4)
    np.testing.assert_allclose(psi, run.records["psi"], atol=1e-4)
    for k in (1, 2, 3):
        reference = RamachandranReference.load(tmp_path / f"ramachandran_reference_residue{k}.npz")
        assert sum(reference.basins.values()) <= 1 + 1e-12 and "kl_64" in reference.noise_floor
        assert reference.basins["beta"] == pytest.approx(metrics[f"res{k}_basin_beta"])
        assert f"res{k}_kl_64_half_vs_half" in metrics
