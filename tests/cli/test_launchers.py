"""Hydra launchers (conf/hydra/launcher): flowcg's defaults compose, and a real sweep runs through submitit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from flowcg.cli.common import CONFIG_DIR, CONFIG_PACKAGE

# pytest resets warning filters per test; flowcg.cli silences this one for the CLIs (see there)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated against ConfigStore schema:UserWarning")

BIN = Path(sys.executable).parent
LAUNCHERS = Path(CONFIG_DIR) / "hydra" / "launcher"
TINY = [
    "logger=none",
    "train/schedule=constant",
    "train.batch_size=64",
    "train.final_steps=10",
    "train.eval_batch_size=128",
    "train.show_progress=false",
    "n_samples=500",
]


def _schema(name: str):
    if name == "joblib":
        from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

        return OmegaConf.structured(JobLibLauncherConf)
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    return OmegaConf.structured({"submitit_local": LocalQueueConf, "submitit_slurm": SlurmQueueConf}[name])


def _launcher(config_name: str, *overrides: str) -> dict:
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):  # the CLIs' search path
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize("name", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_file_stands_alone(name):
    """Every field and the _target_ of the plugin's schema are in our file, which Hydra merges onto
    that schema today and would load alone once it drops automatic schema matching."""
    ours, schema = OmegaConf.load(LAUNCHERS / f"{name}.yaml"), _schema(name)
    assert set(ours) == set(schema)
    assert ours._target_ == schema._target_


@pytest.mark.parametrize("config_name", ["train", "sample", "reference", "al"])  # every flowcg CLI
def test_every_cli_composes_flowcg_launcher_defaults(config_name):
    joblib = _launcher(config_name, "hydra/launcher=joblib")
    assert joblib["_target_"] == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert joblib["n_jobs"] == 2

    slurm = _launcher(config_name, "hydra/launcher=submitit_slurm", "hydra.sweep.dir=/shared/sweep", "hydra.launcher.partition=cpu")
    assert slurm["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert slurm["submitit_folder"] == "/shared/sweep/.submitit/%j"
    assert (slurm["partition"], slurm["cpus_per_task"], slurm["mem_gb"], slurm["timeout_min"]) == ("cpu", 2, 8, 720)
    assert slurm["setup"] == ["export OMP_NUM_THREADS=2"]

    local = _launcher(config_name, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    assert local["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert (local["timeout_min"], local["cpus_per_task"]) == (5, 1)


@pytest.mark.slow
def test_submitit_local_sweep_runs_both_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [str(BIN / "flowcg-train"), "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
         "experiment=double_well", "seed=0,1", f"hydra.sweep.dir={sweep}", *TINY],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "automatic_schema_matching" not in result.stderr
    for job in (0, 1):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["seed"] == job and 0.0 <= metrics["ess"] <= 1.0
        assert metrics["device"].endswith("1 torch threads")  # the job inherited OMP_NUM_THREADS
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2
