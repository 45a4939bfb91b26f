"""What re-inverting the dihedral terms does to finished AL runs fitted without it: the same models, the same final CG MD.

    .venv/bin/python data_free_benchmarks/al_reinversion_probe.py RUN [RUN ...] [--label al_reinversion_probe]

Each RUN is a finished ``flowcg-al`` folder whose models kept the dihedral terms inverted before any label
(``cg_model.dihedral_reinversion=once``, or a run from before the option). It is copied to
``runs/<label>/<arm>_<seed>``; the copy's last-round models get their dihedral terms re-inverted on the
run's prior frames with their own network energy in the weights, by the loop's own
:meth:`~flowcg.active.loop.ActiveLearningLoop.reinvert_dihedrals` (what ``dihedral_reinversion=after_fit`` does), and the last round is simulated and evaluated again with
the run's own seed, so only the dihedral terms differ from the original. Rerunning skips finished runs.
Results: ``results/<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from al_final_md_noise import run_config
from flowcg.hardware import cpu_model
from flowcg.cli.al import build_loop
from flowcg.io import load_json, save_atomic, save_json_atomic, write_atomic

HERE = Path(__file__).resolve().parent
METRICS = ("w1", "kl64", "basin_beta", "basin_alpha_R", "basin_alpha_L")


def reinvert_and_evaluate(run: Path, copy: Path) -> dict:
    """The last round of ``run`` with its models' dihedral terms re-inverted, simulated and evaluated in ``copy``."""
    done = copy / "reinverted.json"
    if done.is_file():
        return load_json(done)
    shutil.copytree(run, copy, dirs_exist_ok=True)
    loop, _, _ = build_loop(run_config(run), copy)
    last = loop.options.rounds
    models = loop.committee(last)
    ess = [loop.reinvert_dihedrals(model) for model in models]
    save_atomic({"models": [model.state_dict() for model in models]}, loop.round_dir(last) / "models.pt")
    metrics = loop.simulate_and_evaluate(last)
    result = {"reweighting_ess": min(ess), **{key: metrics[key] for key in METRICS}}
    save_json_atomic(result, done)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished flowcg-al run folders")
    parser.add_argument("--label", default="al_reinversion_probe")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        name = f"{run.parent.name}_{run.name}"
        before = load_json(run / "metrics.json")["rounds"][-1]
        after = reinvert_and_evaluate(run, HERE / "runs" / args.label / name)
        rows.append({"run": str(run), "name": name, "before": {key: before[key] for key in METRICS}, "after": after})
        print(f"{name}: W1 {before['w1']:.4f} -> {after['w1']:.4f}, KL64 {before['kl64']:.3f} -> {after['kl64']:.3f} "
              f"(ESS {after['reweighting_ess']:.3f})", flush=True)
    mean = {f"{when}_{key}": float(np.mean([row[when][key] for row in rows])) for when in ("before", "after") for key in ("w1", "kl64")}
    result = {"rows": rows, **mean, "cpu": cpu_model()}
    save_json_atomic(result, HERE / "results" / f"{args.label}.json")
    lines = ["| run | W1 before | W1 after | KL64 before | KL64 after | αR before | αR after | αL before | αL after | reweighting ESS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['before']['w1']:.4f} | {r['after']['w1']:.4f} | {r['before']['kl64']:.3f} | {r['after']['kl64']:.3f} | "
              f"{r['before']['basin_alpha_R']:.3f} | {r['after']['basin_alpha_R']:.3f} | {r['before']['basin_alpha_L']:.4f} | "
              f"{r['after']['basin_alpha_L']:.4f} | {r['after']['reweighting_ess']:.3f} |" for r in rows]
    lines.append(f"| mean | {mean['before_w1']:.4f} | {mean['after_w1']:.4f} | {mean['before_kl64']:.3f} | {mean['after_kl64']:.3f} | | | | | |")
    write_atomic(HERE / "results" / f"{args.label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))


if __name__ == "__main__":
    main()
