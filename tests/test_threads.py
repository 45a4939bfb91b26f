"""Core sharing between flowcg processes on one machine (flowcg.threads)."""

import os
import subprocess
import sys

import pytest
import torch

from flowcg import threads


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_registered", None)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    previous = torch.get_num_threads()
    yield tmp_path / "registry"
    torch.set_num_threads(previous)


def test_processes_share_the_cores_and_finished_ones_drop_out(registry):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert threads.share_cores(registry) == 4  # alone: every core
        (registry / str(other.pid)).touch()  # a second registered flowcg process starts
        assert threads.rebalance(registry) == 2 and torch.get_num_threads() == 2
        (registry / "999999999").touch()  # the entry of a process that has ended
        (registry / "not-a-pid").touch()
        assert threads.running_processes(registry) == (2, 0)
        assert sorted(p.name for p in registry.iterdir()) == sorted([str(os.getpid()), str(other.pid)])
    finally:
        other.kill()
        other.wait()
    assert threads.rebalance(registry) == 4


def test_the_parent_does_not_count_and_explicit_threads_are_left_alone(registry, monkeypatch):
    threads.share_cores(registry)
    (registry / str(os.getppid())).touch()  # e.g. the shell or launcher waiting for this process
    assert threads.running_processes(registry) == (1, 0)
    monkeypatch.setattr(threads, "_registered", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(1)
    assert threads.share_cores(registry / "other") is None and torch.get_num_threads() == 1  # the user's count stays
    assert (registry / "other" / str(os.getpid())).read_text() == "3"  # registered as holding 3 threads
    assert threads.rebalance(registry / "other") is None
    monkeypatch.setattr(threads, "_registered", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # a nested setting: still the user's, counted as one sharing process
    assert threads.share_cores(registry / "nested") is None and torch.get_num_threads() == 1
    assert (registry / "nested" / str(os.getpid())).read_text() == ""


def test_sharing_processes_leave_the_threads_of_fixed_ones_free(registry):
    """A benchmark job run with OMP_NUM_THREADS=1 beside a training run: the training takes the
    cores that job leaves (4 − 1 = 3 here), not all of them."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert threads.share_cores(registry) == 4
        (registry / str(other.pid)).write_text("1")
        assert threads.running_processes(registry) == (1, 1)
        assert threads.rebalance(registry) == 3
        (registry / str(other.pid)).write_text("6")  # holds more than there are cores: one thread left
        assert threads.rebalance(registry) == 1
    finally:
        other.kill()
        other.wait()
