"""Trained models shipped inside the package: ``flowcg/pretrained/<name>/``.

Each folder holds what :func:`flowcg.builders.load_run` needs (``config.yaml``, ``model.pt``:
the float32 weights only), the reference MD's backbone torsions it is evaluated against
(``reference.npz``: ``phi``, ``psi`` in rad, one frame per ps) and a ``PROVENANCE.md`` naming the
training command, its device and the reference run. :func:`publish` writes such a folder from a
finished training run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from flowcg.analysis.molecular import Reference, load_reference
from flowcg.builders import CONFIG_NAME, MODEL_NAME, Run, load_run
from flowcg.errors import MissingFileError
from flowcg.io import load_torch, save_atomic

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
REFERENCE_NAME = "reference.npz"


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / MODEL_NAME).is_file()) if PRETRAINED_DIR.is_dir() else []


def pretrained_dir(name: str) -> Path:
    """Folder of the shipped model ``name``; a clear error naming the available ones otherwise."""
    folder = PRETRAINED_DIR / name
    if not (folder / MODEL_NAME).is_file():
        raise MissingFileError(f"no pretrained model '{name}'; available: {', '.join(available()) or 'none'}")
    return folder


def load_pretrained(name: str, device: str | None = None) -> Run:
    """Target and trained model of the shipped model ``name``."""
    return load_run(pretrained_dir(name), device=device)


def pretrained_md_reference(name: str) -> Reference | None:
    """The plain-MD (φ, ψ) time series shipped with model ``name`` (TICA's input), or None. The
    accurate yardstick of its metrics is the target's walker reference
    (:func:`flowcg.analysis.molecular.shipped_reference`)."""
    path = pretrained_dir(name) / REFERENCE_NAME
    return load_reference(path) if path.is_file() else None


def publish(run_dir: str | Path, name: str, reference: tuple[np.ndarray, np.ndarray] | None, provenance: str) -> Path:
    """Copy a finished run into ``flowcg/pretrained/<name>`` (weights as float32, no optimiser state)."""
    run_dir, folder = Path(run_dir), PRETRAINED_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.load(run_dir / CONFIG_NAME)
    cfg.reference = None  # the run's reference path is machine-specific; the shipped one sits beside the model
    if "init_from" in cfg:
        cfg.init_from = None  # likewise; the provenance names the run it was warm-started from
    cfg.logger = {"kind": "none", "options": {}}
    OmegaConf.save(cfg, folder / CONFIG_NAME)
    state = load_torch(run_dir / MODEL_NAME, what="model file")["model"]
    save_atomic({"model": {k: v.float() if v.is_floating_point() else v for k, v in state.items()}}, folder / MODEL_NAME)
    if reference is not None:
        np.savez_compressed(folder / REFERENCE_NAME, phi=reference[0].astype(np.float32), psi=reference[1].astype(np.float32))
    (folder / "PROVENANCE.md").write_text(provenance)
    return folder
