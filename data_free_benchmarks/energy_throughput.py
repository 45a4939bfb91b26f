"""Energy + force evaluations per second: the torch force field against OpenMM on the same cores.

Settings, for aldp_implicit (ff96 + OBC1) and aldp_vacuum, at batch sizes 1, 64 and 1024:

* torch float32 / float64: one batched call of ``TorchForceField.energy_and_forces`` (one pass of
  analytic derivatives), eager and with ``torch.compile``d kernels (``compile=True``; the first
  call, which compiles or loads the cached kernels, is timed apart as ``compile_seconds``), with 1
  intra-op thread and with one per core (OpenMP; on a machine shared with other busy processes
  OpenMP's spin-waiting can collapse the multi-threaded rate, hence both rows and
  ``OMP_WAIT_POLICY=PASSIVE`` in the command);
* OpenMM, frame by frame through :class:`~flowcg.targets.openmm_bridge.OpenMMEvaluator`: CPU
  platform in one process with ``Threads`` = 1 and = all cores, CPU platform over a pool of worker
  processes (one per core, one thread each), and the Reference platform (single process and pool).

Each setting is timed by wall clock over repeated calls for at least ``--seconds`` (after one warm-up
call); the machine's load average is recorded at start and end, since other jobs share the cores.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python data_free_benchmarks/energy_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import openmm
import torch

from flowcg.builders import cpu_model
from flowcg.targets.forcefield import TorchForceField
from flowcg.targets.openmm_bridge import OpenMMEvaluator
from flowcg.targets.systems import load_system

RESULTS = Path(__file__).parent / "results" / "energy_throughput.json"
BATCH_SIZES = (1, 64, 1024)


def throughput(evaluate, frames: np.ndarray, seconds: float) -> float:
    """Configurations per second (wall clock) of ``evaluate(frames)``."""
    evaluate(frames)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        evaluate(frames)
        calls += 1
    return calls * len(frames) / (time.perf_counter() - start)


def benchmark_preset(preset: str, n_cores: int, seconds: float) -> dict:
    ms = load_system(preset)
    rng = np.random.default_rng(0)
    frames = {b: ms.positions + 0.003 * rng.standard_normal((b, *ms.positions.shape)) for b in BATCH_SIZES}
    rows, compile_seconds = {}, {}
    for threads in sorted({1, n_cores}):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.float64):
            tensors = {b: torch.as_tensor(f, dtype=dtype) for b, f in frames.items()}
            for compiled in (False, True):
                ff = TorchForceField(ms.system, ms.positions, dtype=dtype, compile=compiled)
                name = f"torch {str(dtype).split('.')[-1]}{' compiled' if compiled else ''}, {threads} thread(s)"
                start = time.perf_counter()
                ff.energy_and_forces(tensors[max(BATCH_SIZES)])
                if compiled:
                    if not ff.compiled:
                        raise RuntimeError(f"{name}: torch.compile failed (see the log); no compiled figure to report")
                    compile_seconds[name] = time.perf_counter() - start
                rows[name] = {
                    b: throughput(lambda _, b=b: ff.energy_and_forces(tensors[b]), frames[b], seconds) for b in BATCH_SIZES
                }
    torch.set_num_threads(n_cores)
    openmm_settings = {
        "OpenMM CPU, 1 process, 1 thread": dict(platform="CPU", threads=1),
        f"OpenMM CPU, 1 process, {n_cores} threads": dict(platform="CPU", threads=n_cores),
        f"OpenMM CPU, pool of {n_cores} processes": dict(platform="CPU", n_workers=n_cores),
        "OpenMM Reference, 1 process": dict(platform="Reference"),
        f"OpenMM Reference, pool of {n_cores} processes": dict(platform="Reference", n_workers=n_cores),
    }
    for name, options in openmm_settings.items():
        evaluator = OpenMMEvaluator(ms.system, **options)
        try:
            rows[name] = {b: throughput(evaluator.evaluate, frames[b], seconds) for b in BATCH_SIZES}
        finally:
            evaluator.close()
    best_openmm = max((name for name in rows if name.startswith("OpenMM")), key=lambda n: rows[n][1024])
    best_torch = max((name for name in rows if name.startswith("torch")), key=lambda n: rows[n][1024])
    return {
        "evaluations_per_second": rows,
        "compile_seconds": compile_seconds,
        "best_openmm_at_1024": best_openmm,
        "best_torch_at_1024": best_torch,
        "speedup_at_1024": rows[best_torch][1024] / rows[best_openmm][1024],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["aldp_implicit", "aldp_vacuum"])
    parser.add_argument("--seconds", type=float, default=1.5, help="minimum timing window per setting")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    n_cores = len(os.sched_getaffinity(0))
    report = {
        "command": " ".join(
            [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ]
            + [".venv/bin/python data_free_benchmarks/energy_throughput.py"]
        ),
        "cpu": cpu_model(),
        "cores": n_cores,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "openmm": openmm.version.version,
        "loadavg_start": os.getloadavg(),
    }
    start = time.perf_counter()
    report["presets"] = {p: benchmark_preset(p, n_cores, args.seconds) for p in args.presets}
    report["wall_seconds"] = time.perf_counter() - start
    report["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['cpu']}, {n_cores} cores, torch threads {report['torch_threads']}, load {report['loadavg_start']}")
    for preset, r in report["presets"].items():
        print(f"\n{preset}: speed-up at 1024 = {r['speedup_at_1024']:.1f}x ({r['best_torch_at_1024']} vs {r['best_openmm_at_1024']})")
        for name, row in r["evaluations_per_second"].items():
            print(f"  {name:36s} " + "  ".join(f"B={b}: {v:9.0f}/s" for b, v in row.items()))
    print(f"wall {report['wall_seconds']:.1f} s, load at end {report['loadavg_end']} -> {args.out}")


if __name__ == "__main__":
    main()
