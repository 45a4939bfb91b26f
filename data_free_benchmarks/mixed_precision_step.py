"""A training step of the shipped ALDP flow at full precision against bfloat16 conditioners, in one process.

The VM this project runs on drifts in speed by up to 20 % within an hour, more than the effect, so
the two settings (``train.conditioner_dtype`` null and ``bfloat16``) are timed in one process on the
same compiled flow, alternating blocks of steps, and compared by their medians. A step is
``Trainer.train_step`` at β = 1 (draw, log q, energy on the compiled torch force field, backward,
clipping, Adam) at batch 1 024 on 2 threads, as in ``flow_throughput.py``.

    .venv/bin/python data_free_benchmarks/mixed_precision_step.py          # ≈ 3 min on 2 cores

writes ``results/mixed_precision_step.json``. Prints only the medians otherwise; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from flow_throughput import add_in_process_arguments, alternating_step_times, step_trainer
from flowcg import load_target
from flowcg.builders import cpu_model, load_run
from flowcg.io import save_json_atomic

ROOT = Path(__file__).resolve().parents[1]
#: the two settings, as train.conditioner_dtype
SETTINGS = {"float32": None, "bfloat16": "bfloat16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_in_process_arguments(parser, blocks=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_run(ROOT / "flowcg/pretrained/aldp_implicit").model.use_compile()
    target = load_target("aldp_implicit", compile=True)
    with tempfile.TemporaryDirectory() as run_dir:
        # one trainer per setting on the same model (each its own Adam; at lr 1e-6 the weights stay put)
        trainers = {name: step_trainer(model, target, args.batch, run_dir, conditioner_dtype=dtype) for name, dtype in SETTINGS.items()}
        times, _ = alternating_step_times(trainers, args.blocks, args.steps)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    result = {"command": "python data_free_benchmarks/mixed_precision_step.py", "cpu": cpu_model(), "threads": args.threads,
              "batch": args.batch, "compiled": model.compiled, "median_step_ms": medians,
              "min_step_ms": {name: min(t) * 1e3 for name, t in times.items()}, "speed_up": medians["float32"] / medians["bfloat16"],
              "steps_ms": {name: [x * 1e3 for x in t] for name, t in times.items()}}
    save_json_atomic(result, ROOT / "data_free_benchmarks/results/mixed_precision_step.json")
    print(f"median step: float32 {medians['float32']:.1f} ms, bfloat16 conditioners {medians['bfloat16']:.1f} ms "
          f"({result['speed_up']:.2f}x); compiled: {model.compiled}")


if __name__ == "__main__":
    main()
