"""Thread counts per kind of work.

One process, two kinds of kernels: the coupling flow is dominated by matrix products, which
OpenMP threads speed up; the force field is hundreds of small fused loops over a chunk of 512
configurations, which two OpenMP threads make 2–3× *slower* than one on a 2-core machine (thread
wake-ups and barriers cost more than the loops; ``data_free_benchmarks/RESULTS.md``). So the
force field runs on :data:`FORCEFIELD_THREADS` threads inside :func:`torch_threads`, and
everything else keeps torch's process-wide setting.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: Threads for a force-field pass on the CPU (see the module docstring).
FORCEFIELD_THREADS = 1


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
