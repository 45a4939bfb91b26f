"""Active learning of a CG potential for alanine dipeptide: AL against a static MD and random selection.

    .venv/bin/python data_free_benchmarks/al_aldp.py --reference outputs/reference/aldp_implicit_cg.npz [--jobs 2] [--seeds 0 1 2]

Arms (each a real ``flowcg-al`` run in ``data_free_benchmarks/runs/al_aldp/<arm>/seed<s>``, git-ignored;
rerunning resumes unfinished runs from their journals and skips finished ones):

* ``al``: ``experiment=al_aldp``, the RMSD-coverage strategy with the flow oracle;
* ``al_threshold_0.01``: the same with a 0.01 nm coverage threshold (at 0.02 nm the simulated
  frames run out of uncovered candidates after 2–3 rounds, leaving part of the budget unspent);
* ``random``: the same loop with random selection among the simulated frames;
* ``static``: no rounds; the whole budget as one initial short MD (``loop.rounds=0``), with the
  same spacing between frames as the initial MD of the other arms.

Equal oracle budget: every arm ends with the same number of labelled all-atom configurations
(initial frames + rounds × queries × draws per query; an AL round may use fewer when fewer frames
pass its threshold, never more). Energy evaluations are reported beside it: the MD arms pay
``frame_interval_steps`` steps per frame, the flow oracle one evaluation per draw.

Metric: W1 between each arm's final CG MD (64 replicas × 30 ps from initial-MD frames) and the
reference MD mapped to CG, on the reference's
first two TICs (pairwise bead distances, lag ``reference_lag_frames`` = 20 ps), plus the
Ramachandran KL64(ref‖CG MD). Relative improvement = 1 − W1_AL / W1_baseline, on seed means.
Results: ``results/al_aldp.json`` and ``results/al_aldp.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RUNS = HERE / "runs" / "al_aldp"

INITIAL_FRAMES, ROUNDS, QUERIES, DRAWS = 500, 4, 25, 32
BUDGET = INITIAL_FRAMES + ROUNDS * QUERIES * DRAWS
#: the final CG MD, which only serves the evaluation, runs 30 ps per replica instead of 6 ps
FINAL = ["simulation.final_n_steps=15000"]
ARMS = {
    "al": ["experiment=al_aldp", *FINAL],
    # a lower coverage threshold, so that AL spends the whole label budget like the other arms
    "al_threshold_0.01": ["experiment=al_aldp", "strategy.threshold_nm=0.01", *FINAL],
    "random": ["experiment=al_aldp", "strategy=random", *FINAL],
    "static": ["experiment=al_aldp", "loop.rounds=0", f"initial.n_frames={BUDGET}", *FINAL],
}


def run_arm(arm: str, seed: int, reference: Path) -> dict:
    run_dir = RUNS / arm / f"seed{seed}"
    summary = run_dir / "metrics.json"
    if not summary.is_file():
        started = time.perf_counter()
        command = [str(BIN / "flowcg-al"), *ARMS[arm], f"seed={seed}", f"reference={reference}", f"hydra.run.dir={run_dir}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(RUNS / f"{arm}_seed{seed}.log", "a") as log:
            subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
        data = json.loads(summary.read_text())
        data["benchmark_wall_s"] = time.perf_counter() - started
        summary.write_text(json.dumps(data, indent=2))
    data = json.loads(summary.read_text())
    final = data["rounds"][-1]
    return {"arm": arm, "seed": seed, "w1": final["w1"], "w1_tic0": final["w1_tic0"], "w1_tic1": final["w1_tic1"],
            "kl64": final["kl64"], "basins": {k[6:]: final[k] for k in final if k.startswith("basin_")},
            "labels": final["n_labels"], "evaluations": data["initial_evaluations"] + final["oracle_evaluations"],
            "w1_per_round": [r["w1"] for r in data["rounds"]], "wall_s": data.get("benchmark_wall_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="CG reference npz (flowcg.active.evaluate.save_cg_reference)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for seed in args.seeds for arm in ARMS]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_arm(*job, args.reference.resolve()), jobs))
    arms = {}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        arms[arm] = {"w1_mean": float(np.mean([r["w1"] for r in mine])), "w1_std": float(np.std([r["w1"] for r in mine])),
                     "kl64_mean": float(np.mean([r["kl64"] for r in mine])), "labels": [r["labels"] for r in mine],
                     "evaluations": [r["evaluations"] for r in mine], "per_seed": mine}
    improvement = {f"{a}_vs_{b}": 1.0 - arms[a]["w1_mean"] / arms[b]["w1_mean"]
                   for a in ("al", "al_threshold_0.01") for b in ("static", "random")}
    result = {"budget_labels": BUDGET, "seeds": args.seeds, "reference": str(args.reference), "arms": arms,
              "relative_w1_improvement": improvement, "device": "CPU, one thread per run"}
    (HERE / "results" / "al_aldp.json").write_text(json.dumps(result, indent=2))
    lines = ["| arm | W1 (mean ± std over seeds) | per seed | KL64 mean | labels | energy evaluations |", "|---|---|---|---|---|---|"]
    for arm, a in arms.items():
        per_seed = ", ".join(f"{r['w1']:.4f}" for r in a["per_seed"])
        lines.append(f"| {arm} | {a['w1_mean']:.4f} ± {a['w1_std']:.4f} | {per_seed} | {a['kl64_mean']:.2f} | "
                     f"{min(a['labels'])}–{max(a['labels'])} | {min(a['evaluations'])}–{max(a['evaluations'])} |")
    lines.append("")
    lines += [f"- relative W1 improvement, {k.replace('_', ' ')}: {v:+.1%}" for k, v in improvement.items()]
    (HERE / "results" / "al_aldp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
