"""Thread counts per kind of work.

One process, two kinds of kernels: the coupling flow is dominated by matrix products, which
OpenMP threads speed up; the force field is hundreds of small fused loops over a chunk of 512
configurations, which two OpenMP threads make 2–3× *slower* than one on a 2-core machine (thread
wake-ups and barriers cost more than the loops; ``data_free_benchmarks/RESULTS.md``). So the
force field runs on :data:`FORCEFIELD_THREADS` threads inside :func:`torch_threads`, and
everything else keeps torch's process-wide setting.

Several flowcg processes on one machine. torch's default, one OpenMP thread per core in every
process, is wrong as soon as two of them run at once: OpenMP threads spin-wait at every barrier
of a parallel loop, so two 2-thread processes on 2 cores descheduled each other's threads and a
25 s training took over 13 minutes (RESULTS.md, "The default thread count"). The flowcg commands
therefore register in a per-user folder of the machine's temporary directory and take an equal
share of the cores (:func:`share_cores`), re-checked while training (:func:`rebalance`), so a
second run started by hand, or by a launcher that does not set threads, slows the first one by its
share and no more. An explicit ``OMP_NUM_THREADS`` is the user's choice and is left alone, but
such a process registers too, with its thread count, which the others leave free: a benchmark
that runs its jobs on one thread each beside a training run made the training's two threads
spin against the job's one (a 6 250-step phase went from 0.19 s per step to 0.9 s).
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

#: Threads for a force-field pass on the CPU (see the module docstring).
FORCEFIELD_THREADS = 1
#: Where running flowcg commands register: one empty file per process, named by its pid.
REGISTRY = Path(tempfile.gettempdir()) / f"flowcg-processes-{os.getuid() if hasattr(os, 'getuid') else 'user'}"

_registered: Path | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and batch systems restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid: alive
        return True
    return True


def running_processes(registry: Path = REGISTRY) -> tuple[int, int]:
    """Registered flowcg processes still running, this process's parent left out (a launcher, a
    script or a test waiting for it does not compute meanwhile), as (processes that share the
    cores, threads held by processes with a fixed ``OMP_NUM_THREADS``); entries of finished ones
    are removed."""
    sharing = fixed = 0
    for entry in registry.glob("*"):
        if not (entry.name.isdigit() and _alive(int(entry.name))):
            entry.unlink(missing_ok=True)
        elif int(entry.name) != os.getppid():
            try:
                held = entry.read_text().strip()
            except OSError:  # removed between the listing and the read: it has just finished
                continue
            if held.isdigit():
                fixed += int(held)
            else:
                sharing += 1
    return sharing, fixed


def rebalance(registry: Path = REGISTRY) -> int | None:
    """Set torch's threads to this process's share of the cores left by fixed-thread processes,
    among the running registered processes that share (at least one thread); returns the count,
    or ``None`` if this process does not share (not registered, or its threads fixed)."""
    if _registered is None or os.environ.get("OMP_NUM_THREADS"):
        return None
    sharing, fixed = running_processes(registry)
    cores = available_cores()
    threads = max(1, (cores - fixed) // max(1, sharing))
    if threads != torch.get_num_threads():
        log.info("%d torch threads: %d cores, %d held by fixed-thread flowcg processes, the rest shared by %d", threads, cores,
                 min(fixed, cores), max(1, sharing))
        torch.set_num_threads(threads)
    return threads


def _fixed_threads() -> int | None:
    """The user's ``OMP_NUM_THREADS`` as the count this process holds, or ``None`` when unset or not
    a plain number (e.g. a nested "4,2": registered as one sharing process, its count left alone)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def share_cores(registry: Path = REGISTRY) -> int | None:
    """Register this process (removed again at exit) and take its share of the cores
    (:func:`rebalance`). With ``OMP_NUM_THREADS`` set the count is left alone and registered as
    held, so that sharing processes leave those cores free. Returns the thread count or ``None``."""
    global _registered
    if _registered is None:
        try:
            registry.mkdir(parents=True, exist_ok=True)
            entry = registry / str(os.getpid())
            fixed = _fixed_threads()
            entry.write_text("" if fixed is None else str(fixed))
        except OSError as error:  # a read-only temporary directory: run with torch's default
            log.warning("could not register in %s (%s); keeping torch's thread count", registry, error)
            return None
        _registered = entry
        atexit.register(entry.unlink, missing_ok=True)
    return rebalance(registry)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the count after."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
