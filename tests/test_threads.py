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
        assert threads.running_processes(registry) == 2
        assert sorted(p.name for p in registry.iterdir()) == sorted([str(os.getpid()), str(other.pid)])
    finally:
        other.kill()
        other.wait()
    assert threads.rebalance(registry) == 4


def test_the_parent_does_not_count_and_explicit_threads_are_left_alone(registry, monkeypatch):
    threads.share_cores(registry)
    (registry / str(os.getppid())).touch()  # e.g. the shell or launcher waiting for this process
    assert threads.running_processes(registry) == 1
    monkeypatch.setattr(threads, "_registered", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.share_cores(registry / "other") is None and not (registry / "other").exists()
    assert threads.rebalance(registry) is None  # not registered: nothing to share
