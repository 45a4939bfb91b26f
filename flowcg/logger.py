"""Metric loggers: wandb (offline by default, never asks for a login) or nothing.

``conf/logger/*.yaml`` selects one: ``wandb`` with ``mode`` in {offline, online, disabled}, or
``none``. Offline runs land in ``<run_dir>/wandb`` and can be uploaded later with
``wandb sync``. The API key is never requested: offline mode needs none, and online mode uses
whatever the environment already holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowcg.errors import ConfigError, build_from_options

WANDB_MODES = ("offline", "online", "disabled")


class NullLogger:
    """Drops every metric."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    """Thin wrapper over a wandb run."""

    def __init__(self, run_dir: Path, config: dict, project: str = "flowcg", mode: str = "offline", name: str | None = None, tags: list | None = None):
        if mode not in WANDB_MODES:
            raise ConfigError(f"unknown wandb mode '{mode}'; choose one of {', '.join(WANDB_MODES)}")
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode != "online":
            # no network, no login prompt: offline runs never contact the server
            os.environ["WANDB_MODE"] = mode
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project, name=name, tags=list(tags or []), mode=mode, dir=str(run_dir), config=config, reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float | str | bool):
                self.run.summary[key] = value

    def finish(self) -> None:
        self.run.finish()


def build_logger(kind: str, run_dir: Path, config: dict, **options) -> NullLogger | WandbLogger:
    """Logger by kind: ``"wandb"`` (options: project, mode, name, tags) or ``"none"``."""
    if kind == "none":
        return NullLogger()
    if kind == "wandb":
        return build_from_options(WandbLogger, "logger.options", options, run_dir, config)
    raise ConfigError(f"unknown logger '{kind}'; choose 'wandb' or 'none'")
