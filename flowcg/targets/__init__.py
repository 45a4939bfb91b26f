"""Targets: the Boltzmann densities flowcg learns to sample (energies in kT, batched).

``load_target(name, **options)`` is the one way to build a target by name. The registry maps
names to ``"module:factory"`` strings so that heavy back-ends (OpenMM) are imported only
when a molecular target is asked for.
"""

from __future__ import annotations

import importlib
import inspect

from flowcg.targets.base import Target, TargetInputError

TARGETS: dict[str, str] = {
    "double_well": "flowcg.targets.synthetic:DoubleWell",
    "gmm20": "flowcg.targets.synthetic:SlowFastGaussianMixture",
    "gmm40": "flowcg.targets.synthetic:GaussianMixture2D",
    "aldp_implicit": "flowcg.targets.molecular:aldp_implicit",
    "aldp_vacuum": "flowcg.targets.molecular:aldp_vacuum",
    "aldp_amber14": "flowcg.targets.molecular:aldp_amber14",
    "molecule": "flowcg.targets.molecular:molecule_from_files",
}


class UnknownTargetError(KeyError):
    """A target name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one clean line
        return str(self.args[0])


def register_target(name: str, factory: str) -> None:
    """Add a target factory (``"package.module:callable"``) under ``name``."""
    TARGETS[name] = factory


def load_target(name: str, **options) -> Target:
    """Build the target registered under ``name`` with keyword ``options``.

    Raises:
        UnknownTargetError: for a name that is not registered (the message lists the known ones).
        TypeError: for an option the target does not take (the message names it).
    """
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target '{name}'; known targets: {', '.join(sorted(TARGETS))}")
    module_name, factory_name = TARGETS[name].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TypeError(
                f"target '{name}' has no option(s) {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}"
            )
    return factory(**options)


__all__ = ["Target", "TargetInputError", "UnknownTargetError", "load_target", "register_target", "TARGETS"]
