"""The loop's journal: which step of which round has finished, written atomically after its output.

A step's output file is written first (atomically), then the journal entry; a kill between the
two only makes the step run again, and every step is a deterministic function of the seed, the
round and the outputs before it, so a rerun writes the same file. Resuming therefore never loses
a label and never adds one twice: labels live in one file per round, and the dataset of round r
is the initial labels plus the files of the rounds whose ``add`` step is journalled.
"""

from __future__ import annotations

import time
from pathlib import Path

from flowcg.errors import UnreadableFileError
from flowcg.io import load_json, save_json_atomic

__all__ = ["Journal"]


class Journal:
    """Completed (round, step) entries of one loop run, persisted in ``path`` (JSON)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: list[dict] = self._read() if self.path.is_file() else []

    def _read(self) -> list[dict]:
        document = load_json(self.path, what="loop journal")
        if not isinstance(document, dict) or not isinstance(document.get("entries"), list):
            raise UnreadableFileError(f"{self.path}: not a loop journal (no list of entries)")
        return document["entries"]

    def done(self, round_index: int, step: str) -> bool:
        return any(e["round"] == round_index and e["step"] == step for e in self.entries)

    def entry(self, round_index: int, step: str) -> dict:
        for e in self.entries:
            if e["round"] == round_index and e["step"] == step:
                return e
        raise KeyError(f"round {round_index} step '{step}' is not in the journal")

    def record(self, round_index: int, step: str, **info) -> None:
        """Mark a step done (after its output is on disk); ``info`` must be JSON-serialisable."""
        if self.done(round_index, step):
            raise ValueError(f"round {round_index} step '{step}' is already journalled")
        self.entries.append({"round": round_index, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
        save_json_atomic({"entries": self.entries}, self.path)
