"""A training step of the shipped ALDP flow with the training push's map compiled as one graph, against
the layers compiled one by one, in one process.

The VM drifts in speed by up to 20 % within an hour, more than the effect, so the two paths are
timed in one process on copies of the same flow, alternating blocks of steps, and compared by their
medians (as ``mixed_precision_step.py`` does for the conditioners' precision). ``per_layer``: every
coupling layer, the coordinate map and the latent density compiled apart (the fast path before
:attr:`StructuredFlow._compiled_map`); ``map``: today's fast path, where a push with grad goes through
one graph of all couplings and the coordinate map. A step is ``Trainer.train_step`` at β = 1 (draw,
log q, energy on the compiled torch force field, backward, clipping, Adam) at batch 1 024 on 2 threads,
for each conditioner precision asked.

    .venv/bin/python data_free_benchmarks/compiled_map_step.py          # ≈ 5 min on 2 cores

writes ``results/compiled_map_step.json``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

from flow_throughput import add_in_process_arguments, alternating_step_times, step_trainer
from flowcg import load_target
from flowcg.builders import cpu_model, load_run
from flowcg.io import save_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_in_process_arguments(parser, blocks=6)
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shipped = load_run(ROOT / "flowcg/pretrained/aldp_implicit").model
    target = load_target("aldp_implicit", compile=True)
    result = {"command": "python data_free_benchmarks/compiled_map_step.py", "cpu": cpu_model(), "threads": args.threads,
              "batch": args.batch, "median_step_ms": {}, "min_step_ms": {}, "speed_up": {}, "first_steps_s": {}}
    for precision in args.precisions:
        models = {"per_layer": copy.deepcopy(shipped).use_compile(), "map": copy.deepcopy(shipped).use_compile()}
        models["per_layer"]._compiled_map = None
        with tempfile.TemporaryDirectory() as run_dir:
            dtype = None if precision == "float32" else precision
            trainers = {name: step_trainer(model, target, args.batch, run_dir, conditioner_dtype=dtype) for name, model in models.items()}
            times, first = alternating_step_times(trainers, args.blocks, args.steps)
        result["first_steps_s"].update({f"{name} {precision}": seconds for name, seconds in first.items()})
        assert models["map"].compiled and models["map"]._compiled_map.active, "the map fell back to eager: see the log"
        for name, values in times.items():
            result["median_step_ms"][f"{name} {precision}"] = statistics.median(values) * 1e3
            result["min_step_ms"][f"{name} {precision}"] = min(values) * 1e3
        result["speed_up"][precision] = result["median_step_ms"][f"per_layer {precision}"] / result["median_step_ms"][f"map {precision}"]
        print(precision, {name: round(statistics.median(v) * 1e3, 1) for name, v in times.items()},
              f"speed-up {result['speed_up'][precision]:.3f}", flush=True)
    save_json_atomic(result, ROOT / "data_free_benchmarks" / "results" / "compiled_map_step.json")


if __name__ == "__main__":
    main()
