"""Files flowcg writes and reads: atomic writes, and reads that refuse bad files with one line.

Writes go to a temporary file in the same folder, are fsynced, then renamed onto the target: a
kill at any moment leaves either the previous file or the new one, never a torn file.

Reads trust nothing: torch files are loaded with ``weights_only=True`` (tensors, numbers,
strings, lists, tuples and dicts; no pickled code), numpy archives without pickles, JSON as JSON.
A missing file raises :class:`~flowcg.errors.MissingFileError`; a truncated, garbage or foreign
one raises :class:`~flowcg.errors.UnreadableFileError` naming the file and what is wrong.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.json"
>>> save_json_atomic({"step": 3}, path)
>>> load_json(path)  # doctest: +ELLIPSIS
{'step': 3}
>>> _ = path.write_text('{"step": 3')  # a torn file
>>> load_json(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
flowcg.errors.UnreadableFileError: ... is not valid JSON (Expecting ',' delimiter: line 1 column 11 (char 10))
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from flowcg.errors import MissingFileError, UnreadableFileError

__all__ = ["load_json", "load_npz", "load_torch", "save_atomic", "save_json_atomic", "save_npz_atomic", "write_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of a written file: what ``open(path, "w")`` gives under the process's umask.
_DEFAULT_MODE = 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _DEFAULT_MODE)  # mkstemp makes 0600; the result should read like any file the user writes
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
    """torch.save ``obj`` (tensors and plain data only, so :func:`load_torch` can read it) atomically."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def save_npz_atomic(path: str | os.PathLike, compressed: bool = False, **arrays) -> None:
    """numpy.savez (``savez_compressed`` if ``compressed``) ``arrays`` to ``path`` atomically."""
    save = np.savez_compressed if compressed else np.savez
    write_atomic(path, lambda handle: save(handle, **arrays))


def save_json_atomic(data, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    payload = json.dumps(data, indent=2).encode()
    write_atomic(path, lambda handle: handle.write(payload))


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no {what} at {path}")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_torch(path: str | os.PathLike, map_location="cpu", what: str = "torch file"):
    """The tensors and plain data that :func:`save_atomic` wrote to ``path`` (``weights_only=True``)."""
    path = _existing(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any pickled class or function; say which one
        raise UnreadableFileError(f"{path}: not a {what} flowcg can read safely: {_first_line(error)}") from None
    except Exception as error:  # the reader fails in many ways on a torn or foreign file (zip, pickle stack, EOF)
        raise UnreadableFileError(f"{path}: truncated or not a {what} ({type(error).__name__}: {_first_line(error)})") from None


def load_npz(path: str | os.PathLike, what: str = "numpy archive", keys: Iterable[str] | None = None,
             optional: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (default: all) of the ``.npz`` at ``path`` (no pickled objects), plus those
    of ``optional`` that it holds (keys added to a format after files of it were written); a
    missing key is an unreadable file too."""
    path = _existing(path, what)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(keys or ()) - set(data.files))
            if missing:
                raise UnreadableFileError(f"{path}: not a {what} (no {', '.join(missing)})")
            wanted = data.files if keys is None else [*keys, *(key for key in optional if key in data.files)]
            return {key: data[key] for key in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UnreadableFileError(f"{path}: truncated or not a {what} ({_first_line(error)})") from None


def load_json(path: str | os.PathLike, what: str = "JSON file"):
    """The JSON document at ``path``."""
    path = _existing(path, what)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableFileError(f"{path}: is not valid JSON ({_first_line(error)})") from None
