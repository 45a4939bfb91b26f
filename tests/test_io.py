"""Safe persistence (flowcg.io) and the user-error boundary (flowcg.errors, cli.common.clean_errors)."""

import datetime
import doctest
import stat
import zipfile

import numpy as np
import pytest
import torch

import flowcg.errors
import flowcg.io
from flowcg.active.journal import Journal
from flowcg.active.labels import Labels
from flowcg.cli.common import clean_errors
from flowcg.errors import ConfigError, MissingFileError, UnreadableFileError, build_from_options
from flowcg.io import load_json, load_npz, load_torch, save_atomic, save_json_atomic, save_npz_atomic
from flowcg.training.trainer import rng_state, set_rng_state


@pytest.mark.parametrize("module", [flowcg.io, flowcg.errors])
def test_doctests(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_torch_files_round_trip_and_bad_ones_fail_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"model": {"w": torch.ones(3)}, "step": 4, "history": [0.5, 1.5], "rng": rng_state()}, path)
    assert load_torch(path)["step"] == 4
    _truncate(path)
    with pytest.raises(UnreadableFileError, match=r"checkpoint\.pt: truncated or not a checkpoint"):
        load_torch(path, what="checkpoint")
    path.write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(UnreadableFileError, match="checkpoint.pt"):
        load_torch(path, what="checkpoint")
    with pytest.raises(MissingFileError, match="no checkpoint at"):
        load_torch(tmp_path / "absent.pt", what="checkpoint")


def test_a_file_holding_pickled_objects_is_refused_not_executed(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {}, "made": datetime.datetime(2026, 1, 1)}, path)  # a class torch's weights-only reader refuses
    with pytest.raises(UnreadableFileError, match="can read safely") as caught:
        load_torch(path, what="model file")
    assert "\n" not in str(caught.value)


def test_rng_state_is_plain_data_and_restores_every_generator():
    state = rng_state()
    expected = (torch.rand(2), np.random.rand(2), __import__("random").random())
    set_rng_state(state)
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert __import__("random").random() == expected[2]


def test_npz_and_json_readers_name_the_file_and_the_fault(tmp_path):
    path = tmp_path / "labels.npz"
    save_npz_atomic(path, frames=np.zeros((2, 3)))
    assert load_npz(path, keys=["frames"])["frames"].shape == (2, 3)
    assert set(load_npz(path, keys=[], optional=["frames", "alive"])) == {"frames"}  # an optional key may be absent
    with pytest.raises(UnreadableFileError, match="no alive"):
        load_npz(path, what="simulation record", keys=["frames", "alive"])
    _truncate(path)
    with pytest.raises(UnreadableFileError, match="labels.npz: truncated"):
        load_npz(path)
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as archive:  # an object array needs a pickle
        with archive.open("a.npy", "w") as handle:
            np.save(handle, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableFileError, match="pickled.npz"):
        load_npz(tmp_path / "pickled.npz")
    (tmp_path / "bad.json").write_text("{]")
    with pytest.raises(UnreadableFileError, match="bad.json: is not valid JSON"):
        load_json(tmp_path / "bad.json")


def test_corrupt_journal_and_labels_are_refused(tmp_path):
    (tmp_path / "journal.json").write_text('{"entries": [{"round": 0')
    with pytest.raises(UnreadableFileError, match="journal.json"):
        Journal(tmp_path / "journal.json")
    (tmp_path / "journal.json").write_text('[1, 2]')
    with pytest.raises(UnreadableFileError, match="not a loop journal"):
        Journal(tmp_path / "journal.json")
    (tmp_path / "labels.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UnreadableFileError, match="labels.npz"):
        Labels.load(tmp_path / "labels.npz")


def test_options_are_checked_by_name():
    def factory(a, b=2, *, c=3):
        return a + b + c

    assert build_from_options(factory, "s", {"a": 1, "c": 0}) == 3
    with pytest.raises(ConfigError, match=r"unknown options s.x, s.y; valid: a, b, c"):
        build_from_options(factory, "s", {"a": 1, "x": 0, "y": 0})
    with pytest.raises(ConfigError, match="missing option s.a"):
        build_from_options(factory, "s", {})


def test_clean_errors_prints_user_errors_and_keeps_tracebacks_of_bugs(capsys):
    @clean_errors("flowcg-test")
    def refuse():
        raise ConfigError("train.lr must be > 0")

    with pytest.raises(SystemExit) as stop:
        refuse()
    assert stop.value.code == 2 and capsys.readouterr().err == "flowcg-test: error: train.lr must be > 0\n"

    @clean_errors("flowcg-test")
    def bug():
        raise ValueError("an internal inconsistency")

    with pytest.raises(ValueError, match="internal inconsistency"):
        bug()


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp creates 0600 files: checkpoints and models on a shared cluster folder were unreadable by the group."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.json"
    save_json_atomic({"x": 1}, atomic)
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
