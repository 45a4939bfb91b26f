"""Shared plumbing of the Hydra entry points: config location, clean errors, JSON output."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from functools import wraps
from importlib import resources
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from flowcg.errors import InputError
from flowcg.threads import share_cores

CONFIG_PACKAGE = "flowcg.conf"  # the repository's top-level conf/, installed as this package (pyproject.toml)


def _config_dir() -> str | None:
    try:
        return str(resources.files(CONFIG_PACKAGE))
    except ModuleNotFoundError:  # an install made before the configs were packaged
        return None


CONFIG_DIR = _config_dir()  # the configs' folder in this install (None if they are missing)

log = logging.getLogger("flowcg")


def entry_point(config_name: str, task: Callable[[DictConfig], object]) -> Callable[[], None]:
    """Console-script ``main`` of a Hydra app: runs ``task`` on the composed ``conf/<config_name>``."""

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name=config_name)
    def run(cfg: DictConfig) -> None:
        share_cores()  # after Hydra set up logging, so the thread count is in the run's log
        task(cfg)

    def main() -> None:
        if CONFIG_DIR is None or not Path(CONFIG_DIR).is_dir():
            sys.exit(f"flowcg: its configs (package {CONFIG_PACKAGE}) are not installed; reinstall flowcg (`pip install .` or `pip install -e .`)")
        run()

    return main


def clean_errors(program: str) -> Callable:
    """Print a :class:`~flowcg.errors.InputError` as one line on stderr and exit with status 2;
    every other exception is a bug and keeps its traceback."""

    def decorate(task: Callable) -> Callable:
        @wraps(task)
        def run(*args, **kwargs):
            try:
                return task(*args, **kwargs)
            except InputError as error:
                print(f"{program}: error: {error}", file=sys.stderr)
                sys.exit(2)

        return run

    return decorate


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(data: dict, path: Path) -> None:
    """Pretty JSON with NaN → null and ±inf → strings (strict JSON readers choke on bare NaN)."""
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
