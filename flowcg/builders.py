"""Assemble library objects from a run configuration (the composed Hydra config).

Entry points stay thin: they call these functions. A trained run folder holds ``config.yaml``
(written once the configuration has been validated) and ``model.pt``; :func:`load_run` rebuilds
target and model from them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from flowcg.coordinates.harmonic import DEFAULT_COVARIANCE, harmonic_reference, minimized_positions, unfitted_reference
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.coordinates.slow_torsions import SlowTorsionDiscovery, discover_slow_torsions
from flowcg.errors import ConfigError, MissingFileError, build_from_options
from flowcg.flows import StructuredFlow, build_flow
from flowcg.flows.build import build_internal_flow
from flowcg.hardware import cpu_model
from flowcg.io import load_torch, save_atomic
from flowcg.targets import Target, load_target
from flowcg.training.recipe import build_phases

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CONFIG_NAME = "config.yaml"
MODEL_NAME = "model.pt"


def _plain(section) -> dict:
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section or {})


def resolve_device(name: str) -> torch.device:
    """torch device from a config string; a clear error if CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def seed_everything(seed: int) -> None:
    """One seed drives torch, numpy and Python's RNG."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def describe_device(device: torch.device) -> str:
    """Human-readable device for metrics: GPU name, or CPU model and thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} torch threads"


def build_target(cfg_target) -> Target:
    """Target from ``{name, options}``; an option its config leaves required (``???``, e.g.
    ``target.options.path`` of ``target=molecule``) is a one-line error naming the key to set."""
    if isinstance(cfg_target, DictConfig) and (missing := sorted(OmegaConf.missing_keys(cfg_target))):
        raise ConfigError(
            f"target '{cfg_target.get('name')}' needs {', '.join(missing)}: set it on the command line ({missing[0]}=...)"
        )
    return load_target(cfg_target["name"], **_plain(cfg_target.get("options")))


MODEL_KINDS = ("structured", "internal")


def build_internal_model(target: Target, fit_reference: bool = True, stiff_covariance: str = DEFAULT_COVARIANCE,
                         **options) -> StructuredFlow:
    """Internal-coordinate flow for a molecular target: Z-matrix from its topology, stiff
    coordinates standardised at the force field's minimum (see :mod:`flowcg.coordinates.harmonic`).
    ``slow_coordinates="auto"`` places the slow latents on the torsions that
    :func:`~flowcg.coordinates.slow_torsions.discover_slow_torsions` finds.

    ``stiff_covariance``: ``"diagonal"`` (the default: each stiff coordinate scaled by its own harmonic width)
    or ``"full"`` (their harmonic covariance at the minimum; :mod:`flowcg.coordinates.harmonic`).

    ``fit_reference=False`` skips the minimisation and the curvature evaluations, for a model
    whose weights (standardisation included) are loaded next."""
    transform = internal_transform(target)
    if fit_reference:
        x_min = minimized_positions(target.system, target.positions)
        reference = harmonic_reference(target.energy, transform, x_min, covariance=stiff_covariance)
        if options.get("slow_coordinates") == AUTO:
            options["slow_coordinates"] = _discover(target, transform, x_min, options.get("slow_dim", 2)).selected
    else:
        if options.get("slow_coordinates") == AUTO:
            raise ConfigError("slow_coordinates: auto needs the force field's minimum (fit_reference=True); a run's config.yaml names the indices found")
        reference = unfitted_reference(transform, stiff_covariance)
    return build_from_options(build_internal_flow, "model", options, transform, reference)


AUTO = "auto"


def internal_transform(target: Target) -> InternalCoordinateTransform:
    """The internal-coordinate map of a molecular target's topology (its constrained bonds left out)."""
    if getattr(target, "topology", None) is None:
        raise ConfigError(f"model kind 'internal' needs a molecular target with a topology; '{target.name}' has none")
    return InternalCoordinateTransform.from_topology(target.topology, constraints=getattr(target, "constraints", ()))


def _discover(target: Target, transform: InternalCoordinateTransform, x_min_nm: np.ndarray, slow_dim: int) -> SlowTorsionDiscovery:
    discovery = discover_slow_torsions(target.system, target.topology, transform, x_min_nm, int(slow_dim), target.temperature)
    log.info("slow_coordinates: auto chose %s (%d relaxed minimisations, %.1f s):\n%s",
             discovery.selected, discovery.minimisations, discovery.wall_time_s, discovery.table())
    return discovery


def resolve_slow_coordinates(cfg_model: DictConfig, target: Target) -> SlowTorsionDiscovery | None:
    """For ``model.slow_coordinates: auto`` (internal models): discover the slow torsions and write
    their indices into ``cfg_model``, so that the run's config.yaml names them and rebuilds the same
    model without a scan. Returns the discovery, or None for any other setting."""
    if cfg_model.get("kind") != "internal" or cfg_model.get("slow_coordinates") != AUTO:
        return None
    transform = internal_transform(target)
    discovery = _discover(target, transform, minimized_positions(target.system, target.positions), cfg_model.get("slow_dim", 2))
    cfg_model.slow_coordinates = discovery.selected
    return discovery


def build_model(cfg_model, target: Target, fit_reference: bool = True) -> StructuredFlow:
    """Structured flow for ``target`` from the model options; ``kind`` picks the flow space:
    ``structured`` (R^d, vector targets) or ``internal`` (a molecule's internal coordinates;
    ``fit_reference``: see :func:`build_internal_model`)."""
    options = _plain(cfg_model)
    kind = options.pop("kind", "structured")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind '{kind}'; choose one of {', '.join(MODEL_KINDS)}")
    if kind == "internal":
        return build_internal_model(target, fit_reference, **options)
    if len(target.event_shape) != 1:
        raise ConfigError(
            f"target '{target.name}' has configurations of shape {target.event_shape}; "
            "use model=internal (a flow on internal coordinates) for molecules"
        )
    return build_from_options(build_flow, "model", {"dim": target.dim, **options})


def build_run_target(cfg, device: str | None = None) -> tuple[Target, torch.device]:
    """The target of a run config, on ``device`` (default: the config's) in its dtype."""
    torch_device, dtype = resolve_device(device or cfg.device), resolve_dtype(cfg.dtype)
    return build_target(cfg.target).to(device=torch_device, dtype=dtype), torch_device


def build_target_and_model(cfg, device: str | None = None, fit_reference: bool = True) -> tuple[Target, StructuredFlow, torch.device]:
    """Target and (untrained) model of a run config, on ``device`` (default: the config's) in its
    dtype (``fit_reference``: see :func:`build_internal_model`)."""
    target, torch_device = build_run_target(cfg, device)
    return target, build_model(cfg.model, target, fit_reference).to(device=torch_device, dtype=resolve_dtype(cfg.dtype)), torch_device


COMPILE_SETTINGS = ("auto", True, False)


def configure_compile(model: StructuredFlow, setting, model_kind: str) -> StructuredFlow:
    """Compile the model's coupling layers and latent density (``StructuredFlow.use_compile``) per
    the ``compile`` setting: ``true``, ``false``, or ``auto`` = on for molecules (``model.kind:
    internal``, where the flow is most of a step) and off for the small vector flows, which a compilation of
    several seconds would only slow down."""
    if setting not in COMPILE_SETTINGS:
        raise ConfigError(f"compile must be one of auto, true, false; got {setting!r}")
    return model.use_compile(setting is True or (setting == "auto" and model_kind == "internal"))


def final_slow_prior(cfg: DictConfig) -> tuple[int, str]:
    """(components, slow_blocks) of the slow prior at the end of a run: the components of its last
    prior refit (see :func:`~flowcg.training.recipe.build_phases`), else the model's own, and
    ``joint`` once a refit has joined the blocks (``prior_refit.slow_blocks: joint``), else the model's."""
    phases = build_phases(_plain(cfg.get("recipe")).get("phases"), _plain(cfg.train), _plain(cfg.get("prior_refit")))
    refits = [p for p in phases if p.kind == "refit"]
    components = int(refits[-1].settings["n_components"]) if refits else int(cfg.model.n_components)
    joined = any(p.settings.get("slow_blocks") == "joint" for p in refits)
    return components, "joint" if joined else cfg.model.get("slow_blocks", "joint")


@dataclass
class Run:
    """A trained run rebuilt from its folder."""

    config: DictConfig
    target: Target
    model: StructuredFlow
    device: torch.device


def save_model(model: StructuredFlow, run_dir: Path) -> None:
    save_atomic({"model": model.state_dict()}, run_dir / MODEL_NAME)


def load_run(run_dir: str | Path, device: str | None = None) -> Run:
    """Rebuild target and trained model from ``run_dir`` (``config.yaml`` + ``model.pt``)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise MissingFileError(f"{run_dir} is not a flowcg run folder: no {CONFIG_NAME}")
    cfg = OmegaConf.load(config_path)
    # the config's own answer; no resize to fit the weights
    cfg.model.n_components, slow_blocks = final_slow_prior(cfg)
    if "slow_blocks" in cfg.model:
        cfg.model.slow_blocks = slow_blocks
    # the saved weights hold the fitted standardisation: no need to minimise and evaluate energies again
    target, model, torch_device = build_target_and_model(cfg, device, fit_reference=False)
    saved = load_torch(run_dir / MODEL_NAME, map_location=torch_device, what="model file")
    model.load_state_dict(saved["model"])
    model.eval()
    return Run(config=cfg, target=target, model=model, device=torch_device)
