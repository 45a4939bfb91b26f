"""Parity of the torch force field with OpenMM on thermal alanine-dipeptide configurations.

For every preset: 1,000 frames of a seeded Langevin run (1 fs, 1/ps, 300 K, one frame every 50
steps, after a minimisation), evaluated by OpenMM's Reference platform (double precision, the
ground truth) and by the torch force field in float64 and float32; also OpenMM's own CPU platform
(mixed precision) for scale. Reports max / median |ΔE| (kJ/mol) and max |ΔF| (kJ/(mol nm)).

    OMP_NUM_THREADS=2 .venv/bin/python data_free_benchmarks/forcefield_parity.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowcg.targets.forcefield import TorchForceField
from flowcg.targets.openmm_bridge import OpenMMEvaluator
from flowcg.builders import cpu_model
from flowcg.targets.systems import PRESETS, langevin_frames, load_system

RESULTS = Path(__file__).parent / "results" / "forcefield_parity.json"


def _errors(energy: np.ndarray, forces: np.ndarray, ref_energy: np.ndarray, ref_forces: np.ndarray) -> dict:
    de = np.abs(energy - ref_energy)
    df = np.abs(forces - ref_forces)
    return {
        "max_abs_dE": float(de.max()),
        "median_abs_dE": float(np.median(de)),
        "max_abs_dF": float(df.max()),
        "median_max_abs_dF": float(np.median(df.max(axis=(1, 2)))),
    }


def parity(preset: str, n_frames: int, steps_per_frame: int, seed: int) -> dict:
    ms = load_system(preset)
    start = time.perf_counter()
    frames = langevin_frames(ms, n_frames=n_frames, steps_per_frame=steps_per_frame, seed=seed)
    md_seconds = time.perf_counter() - start
    ref_energy, ref_forces = OpenMMEvaluator(ms.system, platform="Reference").evaluate(frames)
    result = {
        "n_frames": n_frames,
        "md_seconds": md_seconds,
        "reference_energy_range": [float(ref_energy.min()), float(ref_energy.max())],
        "reference_max_abs_force": float(np.abs(ref_forces).max()),
    }
    for dtype in (torch.float64, torch.float32):
        ff = TorchForceField(ms.system, ms.positions, dtype=dtype)
        energy, forces = ff.energy_and_forces(torch.as_tensor(frames, dtype=dtype))
        result[f"torch_{str(dtype).split('.')[-1]}"] = _errors(
            energy.double().numpy(), forces.double().numpy(), ref_energy, ref_forces
        )
    result["openmm_cpu_platform"] = _errors(*OpenMMEvaluator(ms.system, platform="CPU").evaluate(frames), ref_energy, ref_forces)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--steps-per-frame", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    report = {
        "command": "OMP_NUM_THREADS=2 .venv/bin/python data_free_benchmarks/forcefield_parity.py",
        "ground_truth": "OpenMM Reference platform (double precision)",
        "md": f"Langevin 1 fs, 1/ps, 300 K, seed {args.seed}, {args.frames} frames x {args.steps_per_frame} steps",
        "machine": cpu_model(),
        "presets": {p: parity(p, args.frames, args.steps_per_frame, args.seed) for p in sorted(PRESETS)},
    }
    report["wall_seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for preset, r in report["presets"].items():
        for key in ("torch_float64", "torch_float32", "openmm_cpu_platform"):
            e = r[key]
            print(f"{preset:14s} {key:20s} max|dE| {e['max_abs_dE']:.2e}  median|dE| {e['median_abs_dE']:.2e}  max|dF| {e['max_abs_dF']:.2e}")
    print(f"wall {report['wall_seconds']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
