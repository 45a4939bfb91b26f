"""Molecules end to end: a few-step aldp_vacuum training with resume, and one-shot sampling
from it and from the shipped pretrained models."""

import json

import mdtraj as md
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from flowcg.pretrained import available, load_pretrained

from test_train_sample import _run  # the tests folder has no __init__: pytest puts it on sys.path

TINY_MOLECULE = [
    "logger=none", "train.batch_size=32", "train.steps_per_stage=3", "train.final_steps=6", "train.max_stages=2",
    "train.eval_batch_size=64", "train.checkpoint_every=2", "n_samples=200", "model.hidden=16", "model.n_couplings=2",
    # the experiment's recipe in miniature: train, refit the slow prior, train on at beta = 1 half conditionally
    "recipe.phases=[{kind:train},{kind:refit,n_components:3,n_samples:200,batch_size:100},"
    "{kind:train,schedule:{kind:constant},final_steps:2,slow_uniform_fraction:0.5}]",
]


@pytest.fixture(scope="module")
def vacuum_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("aldp") / "run"
    # slow latents where the force field's relaxed scans put them (phi, psi), not by name
    result = _run("flowcg-train", "experiment=aldp_vacuum", "model.slow_coordinates=auto", f"hydra.run.dir={run_dir}", *TINY_MOLECULE)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_vacuum_training_runs_end_to_end_and_resumes(vacuum_run):
    metrics = json.loads((vacuum_run / "metrics.json").read_text())
    assert metrics["phases"] == ["train", "refit", "train"] and metrics["steps"] == 3 + 6 + 2 and np.isfinite(metrics["log_z"])
    assert len(metrics["prior_refit"]) == 1
    assert {"fraction_d", "basin_beta_rw", "basin_alpha_L"} <= set(metrics)
    # the discovery is recorded and the config names what it found, so the run reloads without a scan
    assert metrics["slow_discovery"]["selected"] == [41, 45]
    assert json.loads((vacuum_run / "slow_discovery.json").read_text())["selected"] == [41, 45]
    assert list(OmegaConf.load(vacuum_run / "config.yaml").model.slow_coordinates) == [41, 45]
    (vacuum_run / "model.pt").unlink()  # as if killed after the final checkpoint, before the model was written
    result = _run("flowcg-train", "experiment=aldp_vacuum", f"hydra.run.dir={vacuum_run}", "resume=true", *TINY_MOLECULE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((vacuum_run / "metrics.json").read_text())["steps"] == 11


def test_sampling_a_molecule_writes_trajectory_weights_and_cv_report(vacuum_run, tmp_path):
    out = tmp_path / "samples"
    result = _run("flowcg-sample", f"run={vacuum_run}", "n=300", "batch_size=100", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    trajectory = md.load_dcd(str(out / "samples.dcd"), top=str(out / "topology.pdb"))
    assert trajectory.xyz.shape == (300, 22, 3)
    data = np.load(out / "samples.npz")
    inside = data["in_state"]  # the L, all-trans state; this barely trained flow also draws D and cis frames
    assert inside.any()
    assert np.allclose(data["log_w"][inside], -data["energies_kT"][inside] - data["log_q"][inside]) and np.isneginf(data["log_w"][~inside]).all()
    assert np.allclose(data["phi"], md.compute_phi(trajectory)[1][:, 0], atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fraction_outside_state"] == pytest.approx(1 - inside.mean())
    assert len(metrics["cv_discovery"]["latents"]) == 2
    for name in ("ramachandran.png", "free_energy.png", "cv_report.md"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("name, n_atoms", [("aldp_implicit", 22), ("aldp_vacuum", 22), ("ala4_implicit", 42)])
def test_shipped_model_samples_finite_and_reloads_exactly(name, n_atoms):
    assert name in available(), f"pretrained model {name} is not shipped"
    run = load_pretrained(name)
    torch.manual_seed(0)
    draw = run.model.sample(256)
    u = run.target.energy(draw.x)
    assert draw.x.shape == (256, n_atoms, 3) and torch.isfinite(draw.log_q).all() and torch.isfinite(u).all()
    # in float64, so the comparison measures the reload and the inverse map, not float32 rounding
    model = run.model.double()
    x64 = model.sample(64)
    reloaded = load_pretrained(name).model.double()
    assert (reloaded.log_prob(x64.x) - x64.log_q).abs().max() < 1e-5


def test_pretrained_cli_rejects_unknown_names(tmp_path):
    result = _run("flowcg-sample", "pretrained=chignolin", f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode == 2 and "no pretrained model 'chignolin'" in result.stderr


#: TINY_MOLECULE without its three-phase recipe and the flow's compilation: one short eager training phase (plumbing tests)
TINY_PLAIN = [o for o in TINY_MOLECULE if not o.startswith("recipe.")] + ["recipe=plain", "compile=false"]


def test_float64_training_runs_end_to_end(tmp_path):
    """dtype=float64 casts the target (its torch force field included) and the model, and trains."""
    run_dir = tmp_path / "run"
    result = _run("flowcg-train", "experiment=aldp_vacuum", "dtype=float64", f"hydra.run.dir={run_dir}", *TINY_PLAIN)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dtype"] == "float64" and metrics["steps"] == 3 + 6 and np.isfinite(metrics["log_z"])


def test_user_molecule_from_a_system_xml_trains(tmp_path):
    """target=molecule: the shipped PDB with a serialized OpenMM System (ff96 + OBC1 from the prmtop)."""
    import openmm

    from flowcg.targets.systems import ALDP_DIR, load_system_from_files

    pdb = ALDP_DIR / "alanine-dipeptide.pdb"
    system = load_system_from_files(ALDP_DIR / "alanine-dipeptide.prmtop", coordinates=pdb, implicit_solvent="OBC1").system
    xml = tmp_path / "system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(system))
    run_dir = tmp_path / "run"
    result = _run("flowcg-train", "experiment=aldp_vacuum", "target=molecule", f"target.options.path={pdb}",
                  f"target.options.system_xml={xml}", f"hydra.run.dir={run_dir}", *TINY_PLAIN)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["target"] == "alanine-dipeptide" and np.isfinite(metrics["log_z"])


def test_user_molecule_without_a_path_fails_in_one_line(tmp_path):
    result = _run("flowcg-train", "experiment=aldp_vacuum", "target=molecule", f"hydra.run.dir={tmp_path / 'run'}", *TINY_PLAIN)
    assert result.returncode == 2 and "needs target.options.path" in result.stderr
    assert "Traceback" not in result.stderr
