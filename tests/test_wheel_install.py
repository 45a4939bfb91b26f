"""flowcg from a wheel, away from the repository: the Hydra configs ship inside the package
(the top-level conf/ is installed as ``flowcg.conf``), so the CLIs and ``load_target`` work from
any install and any working directory.

The wheel goes into a fresh venv (no editable install of flowcg); its dependencies are those of
the running environment, made visible by a ``.pth`` path line (which does not run that
environment's editable-install hook, so the wheel's flowcg is the one imported).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
TINY_TRAIN = [
    "experiment=double_well",
    "logger=none",
    "train.batch_size=64",
    "train.steps_per_stage=5",
    "train.final_steps=10",
    "train.eval_batch_size=128",
    "train.show_progress=false",
    "train.schedule.beta0=0.3",
    "n_samples=200",
]


def _run(args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(src: Path, dist: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src], cwd=src)
    (built,) = dist.glob("flowcg-*.whl")
    return built


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A copy of the sources (an in-tree build would leave build/ in the repository)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *(p.name for p in REPO.glob("LICEN[CS]E*"))):
        shutil.copy2(REPO / name, src / name)
    for folder in ("flowcg", "conf"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def wheel(sources, tmp_path_factory) -> Path:
    return _build_wheel(sources, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(venv folder, a working directory outside the repository, the environment to run in)."""
    root = tmp_path_factory.mktemp("fresh")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=root)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=root)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "_flowcg_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    work = root / "work"
    work.mkdir()
    assert REPO not in work.resolve().parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", HYDRA_FULL_ERROR="0", VIRTUAL_ENV=str(env_dir), PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env_dir, work, env


def test_the_wheel_carries_every_config_and_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert configs and not [c for c in configs if f"flowcg/conf/{c}" not in names]
    assert "flowcg/conf/__init__.py" in names
    # pyproject lists the packages (flowcg.conf needs the mapping): a subpackage left off that list would be missing here
    packages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "flowcg").rglob("__init__.py"))
    assert not [p for p in packages if p not in names]
    assert any(n.startswith("flowcg/pretrained/aldp_implicit/") and n.endswith("model.pt") for n in names)
    assert any(n.startswith("flowcg/targets/data/") for n in names)


def test_the_sdist_builds_the_same_wheel(sources, wheel, tmp_path_factory):
    """A source distribution (what a package index serves next to the wheel) carries everything:
    the wheel built from the unpacked sdist holds the same files as the one built from the tree."""
    sdist_dir = tmp_path_factory.mktemp("sdist")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(sdist_dir)!r}))"
    name = _run([sys.executable, "-c", code], cwd=sources).stdout.split()[-1]
    with tarfile.open(sdist_dir / name) as archive:
        archive.extractall(sdist_dir, filter="data")
    rebuilt = _build_wheel(sdist_dir / name.removesuffix(".tar.gz"), tmp_path_factory.mktemp("dist_from_sdist"))
    files = lambda path: {n for n in zipfile.ZipFile(path).namelist() if ".dist-info/" not in n}
    assert files(rebuilt) == files(wheel)


def test_the_installed_wheel_is_what_is_imported(installed):
    env_dir, work, env = installed
    out = _run([env_dir / "bin" / "python", "-c", "import flowcg, flowcg.conf; print(flowcg.__file__); print(flowcg.conf.__file__)"], cwd=work, env=env)
    for line in out.stdout.split():
        assert env_dir.resolve() in Path(line).resolve().parents, line


def test_train_runs_from_outside_the_repository(installed):
    env_dir, work, env = installed
    run_dir = work / "run"
    result = _run([env_dir / "bin" / "flowcg-train", *TINY_TRAIN, f"hydra.run.dir={run_dir}"], cwd=work, env=env)
    assert f"results in {run_dir}" in result.stdout
    for name in ("config.yaml", "metrics.json", "model.pt", "checkpoint.pt", "samples.npz"):
        assert (run_dir / name).is_file(), name


def test_sample_a_pretrained_model_from_outside_the_repository(installed):
    env_dir, work, env = installed
    out = work / "sample"
    _run([env_dir / "bin" / "flowcg-sample", "pretrained=aldp_implicit", "n=100", "compile=false", f"hydra.run.dir={out}"], cwd=work, env=env)
    assert (out / "samples.npz").is_file() and (out / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    # scored against the biased-walker reference shipped with the package, not the short plain MD
    assert metrics["ref_floor_kl_64"] < 0.01 and metrics["ref_basin_alpha_L"] > 1e-3 and "kl_64_rw" in metrics


def test_load_target_finds_the_packaged_mixture_parameters(installed):
    env_dir, work, env = installed
    code = "from flowcg.targets import load_target; a, b = load_target('gmm20'), load_target('gmm40'); print(a.event_shape, a.n_modes, b.event_shape, b.n_modes)"
    assert _run([env_dir / "bin" / "python", "-c", code], cwd=work, env=env).stdout.split() == ["(20,)", "3", "(2,)", "40"]
