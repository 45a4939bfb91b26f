"""Shared plumbing of the Hydra entry points: config location, clean errors, JSON output."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from flowcg.targets import TargetInputError, UnknownTargetError
from flowcg.training.checkpoint import MissingCheckpointError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
USER_ERRORS = (ValueError, TypeError, UnknownTargetError, TargetInputError, MissingCheckpointError, FileNotFoundError, FileExistsError)

log = logging.getLogger("flowcg")


def entry_point(config_name: str, task: Callable[[DictConfig], object]) -> Callable[[], None]:
    """Console-script ``main`` of a Hydra app: runs ``task`` on the composed ``conf/<config_name>``."""

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
    def run(cfg: DictConfig) -> None:
        task(cfg)

    def main() -> None:
        if not Path(CONFIG_DIR).is_dir():
            sys.exit(f"flowcg: config folder {CONFIG_DIR} not found; install flowcg from its repository with `pip install -e .`")
        run()

    return main


def clean_errors(program: str) -> Callable:
    """Turn bad-input exceptions into one line on stderr and exit status 2 (no traceback)."""

    def decorate(task: Callable) -> Callable:
        @wraps(task)
        def run(*args, **kwargs):
            try:
                return task(*args, **kwargs)
            except USER_ERRORS as error:
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
