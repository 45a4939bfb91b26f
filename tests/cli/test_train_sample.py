"""The Hydra apps end to end: flowcg-train and flowcg-sample as a user runs them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent
TINY = [
    "logger=none",
    "train.batch_size=64",
    "train.steps_per_stage=5",
    "train.final_steps=10",
    "train.eval_batch_size=128",
    "train.show_progress=false",
    "train.schedule.beta0=0.3",
    "n_samples=500",
]


def _run(program: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(BIN / program), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("train") / "run"
    result = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={run_dir}", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"results in {run_dir}" in result.stdout
    return run_dir


def test_train_writes_metrics_checkpoint_and_plots(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("ess", "log_z", "log_z_exact", "energy_evaluations", "wall_time_s", "device", "mass_left", "mass_left_exact", "kl_x1", "cv_corr_x1"):
        assert key in metrics, key
    assert 0.0 <= metrics["ess"] <= 1.0
    assert metrics["energy_evaluations"] > 0
    # the experiment's recipe: training, then two importance-weighted refits of the slow prior
    assert [record["round"] for record in metrics["prior_refit"]] == [0, 1]
    for name in ("config.yaml", "checkpoint.pt", "model.pt", "samples.npz", "training.json"):
        assert (trained_run / name).is_file(), name
    assert {p.name for p in (trained_run / "plots").glob("*.png")} == {"training.png", "beta_schedule.png", "marginals.png", "samples.png"}


def test_sample_loads_the_run_and_reweights(trained_run, tmp_path):
    out = tmp_path / "samples"
    result = _run("flowcg-sample", f"run={trained_run}", "n=2000", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (2000, 2) and data["log_w"].shape == (2000,)
    assert np.allclose(data["log_w"], -data["energies_kT"] - data["log_q"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"ess", "log_z", "observables", "mass_left"} <= set(metrics)


def test_resume_of_a_finished_run_keeps_its_results(trained_run):
    before = (trained_run / "model.pt").read_bytes()
    result = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={trained_run}", "resume=true", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (trained_run / "model.pt").read_bytes() == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["target=triple_well"], "triple_well"),
        (["model.slow_dim=3"], "slow_dim must lie in [1, 2]"),
        (["train.schedule.kind=cosine"], "unknown tempering schedule 'cosine'"),
        (["model.no_such_option=1"], "no_such_option"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, overrides, message):
    result = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={tmp_path / 'bad'}", *TINY, *overrides)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_existing_run_is_not_overwritten_and_missing_checkpoint_is_reported(trained_run, tmp_path):
    clash = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={trained_run}", *TINY)
    assert clash.returncode == 2 and "already holds a checkpoint" in clash.stderr
    missing = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={tmp_path / 'empty'}", "resume=true", *TINY)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    no_run = _run("flowcg-sample", f"run={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 's'}")
    assert no_run.returncode == 2 and "not a flowcg run folder" in no_run.stderr


@pytest.mark.parametrize("state, damage", [("checkpoint.pt", "truncate"), ("recipe.pt", "garbage")])
def test_corrupt_run_files_fail_in_one_line_and_stay_untouched(trained_run, tmp_path, state, damage):
    """A resume reads recipe.pt (or, killed inside its first phase, checkpoint.pt); flowcg-sample reads model.pt."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if state == "checkpoint.pt":
        (run / "recipe.pt").unlink()
    for name in (state, "model.pt"):
        path = run / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if damage == "truncate" else b"\x80garbage" * 100)
    before = {name: (run / name).read_bytes() for name in (state, "model.pt")}
    resumed = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={run}", "resume=true", *TINY)
    sampled = _run("flowcg-sample", f"run={run}", "n=100", f"hydra.run.dir={tmp_path / 's'}")
    for result, name in ((resumed, state), (sampled, "model.pt")):
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and str(run / name) in errors[0], result.stderr[-2000:]
    assert before == {name: (run / name).read_bytes() for name in before}


def test_multirun_sweep_over_seeds(tmp_path):
    result = _run("flowcg-train", "-m", "experiment=double_well", "seed=0,1", f"hydra.sweep.dir={tmp_path}", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all((tmp_path / str(i) / "metrics.json").is_file() for i in (0, 1))


def test_warm_started_prior_refit_counts_its_draws_and_reloads(trained_run, tmp_path):
    """init_from + train.final_steps=0 + prior_refit: no training step, a refit 3-component prior
    (the config still says 2), its draws in the evaluation count, and flowcg-sample loads the result."""
    run_dir = tmp_path / "refit"
    constant = [o for o in TINY if not o.startswith("train.schedule.")] + ["train/schedule=constant"]
    result = _run(
        "flowcg-train", "experiment=double_well", f"hydra.run.dir={run_dir}", *constant, f"init_from={trained_run}",
        "train.final_steps=0", "prior_refit.n_components=3", "prior_refit.n_samples=3000", "prior_refit.rounds=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    parent = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["steps"] == 0 and [r["round"] for r in metrics["prior_refit"]] == [0, 1]
    eval_batch = 128  # the stage evaluation of the one (empty) stage
    assert metrics["energy_evaluations"] == eval_batch + 2 * 3000
    assert metrics["energy_evaluations_total"] == metrics["energy_evaluations"] + parent["energy_evaluations_total"]
    sampled = _run("flowcg-sample", f"run={run_dir}", "n=1000", f"hydra.run.dir={tmp_path / 'samples'}")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    # a warm start from that run without a refit of its own keeps 3 components, and its config says so
    continued = tmp_path / "continued"
    result = _run("flowcg-train", "experiment=double_well", f"hydra.run.dir={continued}", *constant, f"init_from={run_dir}", "train.final_steps=2",
                  "prior_refit.n_components=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert OmegaConf.load(continued / "config.yaml").model.n_components == 3
    sampled = _run("flowcg-sample", f"run={continued}", "n=1000", f"hydra.run.dir={tmp_path / 'continued_samples'}")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
