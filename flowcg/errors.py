"""The user-error types: bad input that flowcg refuses with one line instead of a traceback.

Raised at the validation boundaries (settings, input files, run folders). The command-line tools
print an :class:`InputError`'s message as one line and exit with status 2; every other exception
is a bug and keeps its traceback.

>>> issubclass(ConfigError, ValueError)  # library callers catching ValueError keep working
True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["ConfigError", "InputError", "MissingFileError", "UnreadableFileError", "build_from_options"]

T = TypeVar("T")


class InputError(Exception):
    """Input flowcg cannot use: its message is the whole story (one line, naming what to change)."""


class ConfigError(InputError, ValueError):
    """A setting that is unknown, out of range, or inconsistent with another one."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or run folder that was named (or is needed to resume) is not there."""


class UnreadableFileError(InputError):
    """A file that is truncated, garbage, not the kind its name says, or holds objects other than
    tensors and plain data (flowcg does not unpickle code from files)."""


def build_from_options(factory: Callable[..., T], section: str, options: Mapping, *args) -> T:
    """``factory(*args, **options)`` for the options of config section ``section``; an unknown or
    missing option is a :class:`ConfigError` naming it and the valid ones, while a ``TypeError``
    raised inside ``factory`` stays the bug it is.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Options:
    ...     steps: int = 10
    >>> build_from_options(Options, "train", {"stesp": 5})
    Traceback (most recent call last):
        ...
    flowcg.errors.ConfigError: unknown option train.stesp; valid: steps
    """
    signature = inspect.signature(factory)
    try:
        signature.bind(*args, **options)
    except TypeError:
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        valid = [name for name, p in list(signature.parameters.items())[len(args):] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [] if accepts_any else sorted(set(options) - set(valid))
        missing = [name for name in valid if signature.parameters[name].default is inspect.Parameter.empty and name not in options]
        problem = f"unknown option{'s' * (len(unknown) > 1)} {', '.join(f'{section}.{k}' for k in unknown)}" if unknown else \
            f"missing option{'s' * (len(missing) > 1)} {', '.join(f'{section}.{k}' for k in missing)}"
        raise ConfigError(f"{problem}; valid: {', '.join(valid) or 'none'}") from None
    return factory(*args, **options)
