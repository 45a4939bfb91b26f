"""Time one-shot sampling and reverse-KL steps of an ALDP run with a given number of torch threads.

    OMP_NUM_THREADS=T .venv/bin/python data_free_benchmarks/aldp_thread_timing.py RUN_DIR T

Prints the seconds for 100 000 one-shot samples (after a compiling warm-up) and the mean seconds of
a reverse-KL step of 1024 draws, half of them conditional on a uniform (φ, ψ) (the last training
stages' objective; the optimiser's learning rate is 0, so the model is not changed).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowcg.builders import load_run  # noqa: E402
from flowcg.sampling import draw_samples  # noqa: E402
from flowcg.training.objective import reverse_kl  # noqa: E402

run_dir, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
run = load_run(run_dir, device="cpu")
draw_samples(run.model, run.target, 10_000)
started = time.perf_counter()
draw_samples(run.model, run.target, 100_000)
sample_s = time.perf_counter() - started
run.model.train()
optimizer = torch.optim.Adam(run.model.parameters(), lr=0.0)
for step in range(23):
    if step == 3:  # after warm-up steps
        started = time.perf_counter()
    optimizer.zero_grad()
    reverse_kl(run.model, run.target, 1.0, 1024, slow_uniform_fraction=0.5).loss.backward()
    optimizer.step()
print(f"threads={threads} sample_100k_s={sample_s:.1f} train_step_s={(time.perf_counter() - started) / 20:.3f}")
