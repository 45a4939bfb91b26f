"""Is flowcg's default thread policy right? Throughput at the default against every fixed setting.

    .venv/bin/python data_free_benchmarks/thread_policy.py [--run RUN_DIR]

The policy (``flowcg/threads.py``): the flow uses torch's process-wide thread count (one per
core by default), the force field runs its pass on one thread inside it. Measured here, in one
process, for the shipped ``aldp_implicit`` architecture on the ``aldp_implicit`` target:

* force field: energy + forces per second at batch 1024 (float32, compiled as in training), with the
  process at the default thread count and at each of 1 … cores;
* training: seconds per reverse-KL step at batch 1024 (draw, log q, energy, backward, Adam at
  lr 0), the compiled fast path as ``flowcg-train`` runs it, same thread settings;
* one-shot sampling: seconds for 100 000 samples.

The verdict is each default's throughput relative to the best setting (the issue's bar: ≥ 0.9).
Results: ``results/thread_policy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from flowcg.builders import configure_compile, cpu_model, load_run
from flowcg.pretrained import pretrained_dir
from flowcg.sampling import draw_samples
from flowcg.training.objective import reverse_kl

RESULTS = Path(__file__).parent / "results" / "thread_policy.json"


def rate(work, repeats: int) -> float:
    """Mean seconds of ``work()`` over ``repeats`` calls after two warm-up calls."""
    work(), work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats


def measure(run, frames: torch.Tensor) -> dict:
    optimizer = torch.optim.Adam(run.model.parameters(), lr=0.0)

    def train_step():
        optimizer.zero_grad()
        reverse_kl(run.model, run.target, 1.0, 1024).loss.backward()
        optimizer.step()

    run.model.train()
    step_s = rate(train_step, 10)
    run.model.eval()
    with torch.no_grad():
        energy_s = rate(lambda: run.target.energy_and_forces(frames), 10) if hasattr(run.target, "energy_and_forces") else None
    sample_s = rate(lambda: draw_samples(run.model, run.target, 100_000), 1)
    return {"train_step_s": step_s, "forcefield_evals_per_s": len(frames) / energy_s if energy_s else None, "sample_100k_s": sample_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a flowcg-train run folder (default: the shipped aldp_implicit)")
    args = parser.parse_args()
    run = load_run(args.run or pretrained_dir("aldp_implicit"), device="cpu")
    configure_compile(run.model, "auto", "internal")
    draw = draw_samples(run.model, run.target, 1024)
    frames = torch.as_tensor(draw.x, dtype=torch.float32)
    default_threads = torch.get_num_threads()
    rows = {"default": {"threads": default_threads, **measure(run, frames)}}
    for threads in range(1, (os.cpu_count() or 1) + 1):
        torch.set_num_threads(threads)
        rows[f"{threads} thread(s)"] = {"threads": threads, **measure(run, frames)}
    torch.set_num_threads(default_threads)
    fixed = [r for name, r in rows.items() if name != "default"]
    best = {"train_step_s": min(r["train_step_s"] for r in fixed), "sample_100k_s": min(r["sample_100k_s"] for r in fixed),
            "forcefield_evals_per_s": max(r["forcefield_evals_per_s"] for r in fixed)}
    default = rows["default"]
    verdict = {"train_step": best["train_step_s"] / default["train_step_s"], "sampling": best["sample_100k_s"] / default["sample_100k_s"],
               "forcefield": default["forcefield_evals_per_s"] / best["forcefield_evals_per_s"]}
    result = {"command": "python data_free_benchmarks/thread_policy.py" + (f" --run {args.run}" if args.run else ""),
              "cpu": cpu_model(), "cores": os.cpu_count(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
              "load_average": os.getloadavg(), "rows": rows, "default_relative_to_best": verdict}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
