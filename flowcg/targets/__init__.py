"""Targets: the Boltzmann densities flowcg learns to sample (energies in kT, batched).

``load_target(name, **options)`` is the one way to build a target by name. The registry maps
names to ``"module:factory"`` strings so that heavy back-ends (OpenMM) are imported only
when a molecular target is asked for. A target whose factory needs options the caller leaves out
(gmm20's and gmm40's means) takes them from its shipped config ``conf/target/<name>.yaml``.
"""

from __future__ import annotations

import importlib
import inspect

from flowcg.errors import ConfigError, build_from_options
from flowcg.targets.base import Target, TargetInputError

TARGETS: dict[str, str] = {
    "double_well": "flowcg.targets.synthetic:DoubleWell",
    "gmm20": "flowcg.targets.synthetic:SlowFastGaussianMixture",
    "gmm40": "flowcg.targets.synthetic:GaussianMixture2D",
    "aldp_implicit": "flowcg.targets.molecular:aldp_implicit",
    "aldp_vacuum": "flowcg.targets.molecular:aldp_vacuum",
    "aldp_amber14": "flowcg.targets.molecular:aldp_amber14",
    "ala4_implicit": "flowcg.targets.molecular:ala4_implicit",
    "ala6_implicit": "flowcg.targets.molecular:ala6_implicit",
    "molecule": "flowcg.targets.molecular:molecule_from_files",
}


class UnknownTargetError(ConfigError, KeyError):
    """A target name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one clean line
        return str(self.args[0])


def register_target(name: str, factory: str) -> None:
    """Add a target factory (``"package.module:callable"``) under ``name``."""
    TARGETS[name] = factory


def configured_options(name: str) -> dict:
    """The ``options`` of the shipped target config ``conf/target/<name>.yaml`` (package
    ``flowcg.conf``) that it sets (not those it marks ``???``), or ``{}`` when there is none."""
    from importlib import resources

    from omegaconf import OmegaConf

    try:
        path = resources.files("flowcg.conf").joinpath("target", f"{name}.yaml")
    except ModuleNotFoundError:
        return {}
    if not path.is_file():
        return {}
    cfg = OmegaConf.create(path.read_text())
    if cfg.get("name") != name or cfg.get("options") is None:
        return {}
    options = {key: cfg.options[key] for key in cfg.options if not OmegaConf.is_missing(cfg.options, key)}
    return OmegaConf.to_container(OmegaConf.create(options), resolve=True)


def load_target(name: str, **options) -> Target:
    """Build the target registered under ``name`` with keyword ``options``. When a required option
    is missing, the shipped config's options (:func:`configured_options`) fill in the ones not
    given, so ``load_target("gmm20")`` is the published 20-D mixture.

    Raises:
        UnknownTargetError: for a name that is not registered (the message lists the known ones).
        ConfigError: for an option the target does not take, or a required one missing (the message names it).
    """
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target '{name}'; known targets: {', '.join(sorted(TARGETS))}")
    module_name, factory_name = TARGETS[name].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    accepted = inspect.signature(factory).parameters
    required = {
        p.name
        for p in accepted.values()
        if p.default is inspect.Parameter.empty and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    if required - set(options):
        options = {**configured_options(name), **options}
    return build_from_options(factory, "target.options", options)


__all__ = ["Target", "TargetInputError", "UnknownTargetError", "configured_options", "load_target", "register_target", "TARGETS"]
