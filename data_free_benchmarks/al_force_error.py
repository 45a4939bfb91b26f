"""The AL arms scored by what their labels teach: the held-out force-matching loss of every round's CG model.

    .venv/bin/python data_free_benchmarks/al_force_error.py [--name al_aldp] [--arms al_iw random_iw prior_only ...]
        [--seeds 0 1 2 3 4] [--n-held-out 20000] [--label NAME_force_error]

W1 and KL of a final CG MD (``al_aldp.py``) saturate on alanine dipeptide: the CG prior alone, inverted from
the flow's draws, already sits at the walker yardstick's floor, and so does every flow arm, so a choice of
queries cannot show there. What the labels change is the mean force at fixed (φ, ψ), and the held-out
force-matching loss measures that (:func:`flowcg.active.evaluate.held_out_force_error`: its differences
between models are differences of mean-force error; the labels' own noise is common to all).

Held-out set: ``--n-held-out`` one-shot draws of the oracle's flow resampled by their importance weights
(:meth:`FlowOracle.equilibrium`, an unweighted equilibrium sample with the mapped instantaneous forces as
labels), from a seed no arm draws from (the loop's ``HELD_OUT_SEED_OFFSET``: seed 0's own held-out set); made once per benchmark name in
``runs/<name>/held_out_forces_<n>.npz`` and shared by every arm and seed. The primary figure, declared before any
arm was scored, is the loss over all held-out rows of each finished run's last-round model (the committee's
mean force, as its CG MD uses it), mean ± SE over seeds; the per-basin losses (β, αR, φ > 0) and every
round's loss come beside it. Comparisons pair seeds as ``al_aldp.py`` does. Nothing is trained or simulated:
the runs of ``al_aldp.py --name NAME`` are read as they are. Results: ``results/<label>.{json,md}``. Runs made
since 2026-12-07 (stop 42) score themselves every round (``loop.held_out_draws``, on their own set of seed
+ 271 828); this script is for those made before, and for one set shared by every seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from al_aldp import ARMS, BASELINES, HERE, NAME, STRATEGY_ARMS, run_summary
from al_final_md_noise import run_config
from flowcg.active.evaluate import held_out_force_error, held_out_labels
from flowcg.active.flow_oracle import FlowOracle
from flowcg.active.labels import Labels
from flowcg.active.loop import HELD_OUT_SEED_OFFSET
from flowcg.analysis.ramachandran import BASINS
from flowcg.builders import cpu_model
from flowcg.cli.al import build_loop
from flowcg.io import save_json_atomic, write_atomic

def finished_loop(run: Path):
    """The loop of the finished ``run``, built from its config: it reads the run's initial labels and prior frames
    back and writes nothing (its own held-out draws are off: the runs share the set of :func:`shared_held_out`)."""
    return build_loop(run_config(run, extra=("loop.held_out_draws=0",)), run)[0]


def shared_held_out(loop, path: Path, n: int) -> Labels:
    """The held-out set of every run of the benchmark (module docstring): seed-0 runs' own held-out seed, drawn
    once from the flow oracle of ``loop`` into ``path``."""
    if not path.is_file() and not isinstance(loop.oracle, FlowOracle):
        raise SystemExit(f"{path} is drawn by a flow oracle: score an arm with oracle=flow first")
    labels = held_out_labels(loop.oracle, n, HELD_OUT_SEED_OFFSET, path)
    print(f"held-out set: {len(labels)} equilibrium draws, {labels.n_energy_evaluations} evaluations -> {path}", flush=True)
    return labels


def score(loop, labels: Labels) -> dict:
    """Held-out loss of every round's model of a finished loop (the last round's per basin too)."""
    per_round = [held_out_force_error(loop.committee(r), labels, loop.backmapper) for r in range(loop.options.rounds + 1)]
    final = per_round[-1]
    return {"force_mse": final["force_mse"], "force_mse_se": final["force_mse_se"],
            "force_mse_per_round": [r["force_mse"] for r in per_round], "row_errors": final.pop("row_errors"),
            **{k: v for k, v in final.items() if k.startswith(("force_mse_", "n_")) and k != "force_mse_se"}}


def comparisons(rows: dict[str, dict[int, dict]]) -> dict:
    """Each strategy arm against each baseline, and each baseline against the prior alone (what its labels teach), on
    the seeds both ran: the loss difference (second − first, positive = first better) paired over seeds with its SE,
    and the mean over seeds of the held-out set's own SE of one seed's difference (how much of it is that set's noise)."""
    result = {}
    pairs = [(a, b) for a in STRATEGY_ARMS for b in BASELINES] + [(b, "prior_only") for b in BASELINES if b != "prior_only"]
    for a, b in [(a, b) for a, b in pairs if a in rows and b in rows]:
        seeds = sorted(set(rows[a]) & set(rows[b]))
        if not seeds:
            continue
        difference = np.array([rows[b][s]["force_mse"] - rows[a][s]["force_mse"] for s in seeds])
        row_se = [float(np.std(rows[b][s]["row_errors"] - rows[a][s]["row_errors"], ddof=1) / np.sqrt(len(rows[a][s]["row_errors"])))
                  for s in seeds]
        se = float(difference.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else float("nan")
        result[f"{a}_vs_{b}"] = {"seeds": seeds, "difference": float(difference.mean()), "se": se,
                                 "relative": float(difference.mean() / np.mean([rows[b][s]["force_mse"] for s in seeds])),
                                 "beyond_2_se": bool(len(seeds) > 1 and difference.mean() > 2 * se),
                                 "held_out_se_per_seed": float(np.mean(row_se))}
    return result


def report(arms: dict, compared: dict) -> list[str]:
    lines = ["| arm | seeds | held-out loss (kJ/mol/nm)², mean ± SE over seeds | per seed | " + " | ".join(BASINS) + " | per round (seed mean) |",
             "|---|---|---|---|" + "---|" * len(BASINS) + "---|"]
    for arm, a in arms.items():
        lines.append(f"| {arm} | {len(a['per_seed'])} | {a['force_mse_mean']:.1f} ± {a['force_mse_se']:.1f} | "
                     + ", ".join(f"{r['force_mse']:.1f}" for r in a["per_seed"].values()) + " | "
                     + " | ".join(f"{a['basins_mean'][b]:.1f}" for b in BASINS) + " | "
                     + " → ".join(f"{v:.1f}" for v in a["per_round_mean"]) + " |")
    lines += ["", "| comparison | seeds | loss difference ± SE (positive: first lower) | relative | beyond 2 SE | held-out SE of one seed's difference |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k.replace('_vs_', ' vs ')} | {len(v['seeds'])} | {v['difference']:+.2f} ± {v['se']:.2f} | {v['relative']:+.1%} | "
              f"{'yes' if v['beyond_2_se'] else 'no'} | {v['held_out_se_per_seed']:.2f} |" for k, v in compared.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=NAME, help="the benchmark whose runs are scored (runs/NAME/<arm>/seed<s>)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--n-held-out", type=int, default=20_000)
    parser.add_argument("--label", default=None, help="results/LABEL.{json,md}; default NAME_force_error")
    args = parser.parse_args()
    runs = HERE / "runs" / args.name
    held_out_path = runs / f"held_out_forces_{args.n_held_out}.npz"
    started = time.perf_counter()
    rows: dict[str, dict[int, dict]] = {}
    held_out = None
    for arm in args.arms:
        for seed in args.seeds:
            if run_summary(runs, arm, seed).is_file():
                loop = finished_loop(runs / arm / f"seed{seed}")
                if held_out is None:
                    held_out = shared_held_out(loop, held_out_path, args.n_held_out)
                rows.setdefault(arm, {})[seed] = score(loop, held_out)
                print(f"{arm} seed {seed}: {rows[arm][seed]['force_mse']:.2f} ± {rows[arm][seed]['force_mse_se']:.2f}", flush=True)
    if not rows:
        raise SystemExit(f"no finished run of {args.arms} x seeds {args.seeds} in {runs}")
    arms = {}
    for arm, per_seed in rows.items():
        values = np.array([r["force_mse"] for r in per_seed.values()])
        arms[arm] = {"force_mse_mean": float(values.mean()),
                     "force_mse_se": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan"),
                     "basins_mean": {b: float(np.nanmean([r[f"force_mse_{b}"] for r in per_seed.values()])) for b in BASINS},
                     "per_round_mean": np.mean([r["force_mse_per_round"] for r in per_seed.values()], axis=0).tolist(),
                     "per_seed": per_seed}
    compared = comparisons(rows)
    for arm in arms.values():
        for row in arm["per_seed"].values():
            row.pop("row_errors")
    result = {"name": args.name, "held_out": {"path": str(held_out_path.relative_to(HERE)), "n": len(held_out), "seed": HELD_OUT_SEED_OFFSET,
                                              "evaluations": held_out.n_energy_evaluations},
              "arms": arms, "comparisons": compared, "wall_s": time.perf_counter() - started, "device": f"{cpu_model()}"}
    label = args.label or f"{args.name}_force_error"
    lines = report(arms, compared)
    save_json_atomic(result, HERE / "results" / f"{label}.json")
    write_atomic(HERE / "results" / f"{label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
