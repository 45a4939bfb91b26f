"""Run the synthetic benchmark suite and write its results table (markdown + JSON).

    OMP_NUM_THREADS=1 .venv/bin/python data_free_benchmarks/synthetic.py [--only NAME ...] [--seeds 0 1 2] [--jobs 2]

Each entry is a real ``flowcg-train`` run (experiment preset + overrides, and for the
``*_2_threads`` entries two torch threads whatever ``OMP_NUM_THREADS`` says) in
``data_free_benchmarks/runs/<name>/seed<k>`` (git-ignored). Finished runs are reused, interrupted
ones resumed, so the suite can be stopped and restarted at any point. Results go to
``results/synthetic.json`` and ``results/synthetic.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

SUITE = {
    "double_well": ["experiment=double_well"],
    "double_well_2_threads": ["experiment=double_well"],
    "gmm40": ["experiment=gmm40"],
    "gmm40_no_refit": ["experiment=gmm40", "prior_refit.n_components=0"],
    "gmm40_no_tempering": ["experiment=gmm40", "train/schedule=constant"],
    "gmm20": ["experiment=gmm20"],
}
#: Entries whose runs get an environment of their own (the thread-count check of the double well).
ENVIRONMENT = {"double_well_2_threads": {"OMP_NUM_THREADS": "2"}}
COLUMNS = ["ess", "log_z_error", "mass_left_error", "kl_x1", "modes_found", "n_modes", "max_mode_weight_error", "energy_evaluations", "wall_time_s"]


def run_one(name: str, overrides: list[str], seed: int) -> dict:
    run_dir = HERE / "runs" / name / f"seed{seed}"
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        resume = ["resume=true"] if (run_dir / "checkpoint.pt").is_file() else []
        command = [str(BIN / "flowcg-train"), *overrides, f"seed={seed}", "logger=none", "train.show_progress=false", f"hydra.run.dir={run_dir}", *resume]
        print("running:", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, env={**os.environ, **ENVIRONMENT.get(name, {})})
    return json.loads(metrics_path.read_text())


def table(rows: list[dict]) -> str:
    header = "| target | seed | " + " | ".join(COLUMNS) + " | device |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for row in rows:
        cells = []
        for key in COLUMNS:
            value = row["metrics"].get(key)
            cells.append("–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value)))
        lines.append(f"| {row['name']} | {row['seed']} | " + " | ".join(cells) + f" | {row['metrics']['device']} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> str:
    """Per target over seeds: mean and worst ESS, worst |Δ log Z|, fewest modes found, mean cost."""
    lines = ["| target | seeds | ESS mean (min) | max abs Δlog Z | max abs Δmass_left | modes found (worst seed) | energy evals (mean) | wall s (mean) |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(row["name"] for row in rows):
        ms = [row["metrics"] for row in rows if row["name"] == name]
        ess = [m["ess"] for m in ms]
        mass = [m["mass_left_error"] for m in ms if "mass_left_error" in m]
        modes = [m["modes_found"] for m in ms if "modes_found" in m]
        mass_cell = f"{max(mass):.2g}" if mass else "–"
        modes_cell = f"{min(modes)}/{ms[0]['n_modes']}" if modes else "–"
        evals = sum(m["energy_evaluations"] for m in ms) / len(ms)
        wall = sum(m["wall_time_s"] for m in ms) / len(ms)
        lines.append(
            f"| {name} | {len(ms)} | {sum(ess) / len(ess):.4f} ({min(ess):.4f}) | {max(m['log_z_error'] for m in ms):.2g} | "
            f"{mass_cell} | {modes_cell} | {evals:.3g} | {wall:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SUITE), help="run only these entries")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (give each its share of the cores with OMP_NUM_THREADS)")
    args = parser.parse_args()
    entries = [(name, seed) for name in (args.only or SUITE) for seed in args.seeds]
    shared = [entry for entry in entries if entry[0] not in ENVIRONMENT]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        metrics = dict(zip(shared, pool.map(lambda entry: run_one(entry[0], SUITE[entry[0]], entry[1]), shared)))
    # entries with their own thread count run alone: two 2-thread runs on 2 cores spin-wait on
    # each other's OpenMP threads (a 25 s double-well run took over 13 min that way)
    metrics.update({entry: run_one(entry[0], SUITE[entry[0]], entry[1]) for entry in entries if entry[0] in ENVIRONMENT})
    rows = [
        {"name": name, "seed": seed, "command": " ".join([*(f"{k}={v}" for k, v in ENVIRONMENT.get(name, {}).items()), "flowcg-train", *SUITE[name], f"seed={seed}"]),
         "metrics": metrics[name, seed]}
        for name, seed in entries
    ]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "synthetic.json").write_text(json.dumps(rows, indent=2) + "\n")
    report = summary(rows) + "\n" + table(rows)
    (results / "synthetic.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
