"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A kill at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch


class MissingCheckpointError(FileNotFoundError):
    """resume was asked for but there is no checkpoint to resume from."""


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def save_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    """numpy.savez ``arrays`` to ``path`` atomically."""
    write_atomic(path, lambda handle: np.savez(handle, **arrays))


def save_json_atomic(data, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    payload = json.dumps(data, indent=2).encode()
    write_atomic(path, lambda handle: handle.write(payload))


def load(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint written by :func:`save_atomic`; a clear error if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)
