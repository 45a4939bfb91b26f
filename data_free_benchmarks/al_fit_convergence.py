"""Is a CG force-matching fit converged, and how much do two fits of the same labels disagree?

    .venv/bin/python data_free_benchmarks/al_fit_convergence.py RUN [--fits 1500:1e-3 4000:3e-3] [--inits 0 1 2]
        [--holdout 0.15] [--label al_fit_convergence]

RUN is a finished ``flowcg-al`` folder without rounds (e.g. ``data_free_benchmarks/runs/al_aldp/flow_draws/seed1``:
3 700 equilibrium flow draws, each its own query, so that a random split of rows is a split of
queries). A random ``--holdout`` share of its rows is set aside (weight 0: never drawn), and the
run's CG model (same prior, same size) is fitted to the rest with :func:`fit_force_matching`,
once per ``--fits`` setting (``steps:lr``; the cosine decay and batch size of the run's config)
and network initialisation ``--inits``. Reported per setting, on the held-out rows:

* the weighted force MSE (kJ/mol/nm)²: the mapped forces scatter by ≈ 300 kJ/mol/nm about the
  mean force, so the MSE stays ≈ 10⁵ and only its decrease below the prior alone's is the mean
  force learned ("signal");
* the disagreement between fits of different initialisations, the mean over held-out rows of
  |F_θ1 − F_θ2|² / (3n) (pairs of inits): the part of a model that is its initialisation's and
  minibatches', not its data's. It is what makes one run's CG MD differ from another's on the
  same labels (``al_final_md_noise.py --retrain``).

Held-out MSE that still falls at the last setting means the fits are not converged; disagreement
that shrinks with it means the seed spread of an AL benchmark was partly unconverged training.
Results: ``results/<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from al_final_md_noise import run_config
from flowcg.builders import cpu_model
from flowcg.cg.schnet import CGSchNet
from flowcg.cg.training import FitOptions, fit_force_matching, weighted_force_mse
from flowcg.cli.al import build_loop
from flowcg.io import save_json_atomic, write_atomic

HERE = Path(__file__).resolve().parent
#: seed of the held-out split
SPLIT_SEED = 123


def parse_fit(text: str) -> tuple[int, float]:
    steps, lr = text.split(":")
    return int(steps), float(lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished flowcg-al run without rounds")
    parser.add_argument("--fits", nargs="+", default=["1500:1e-3", "4000:3e-3"], help="steps:lr settings")
    parser.add_argument("--inits", type=int, nargs="+", default=[0, 1, 2], help="network initialisation seeds")
    parser.add_argument("--holdout", type=float, default=0.15, help="share of rows held out")
    parser.add_argument("--label", default="al_fit_convergence")
    args = parser.parse_args()
    cfg = run_config(args.run)
    if cfg.loop.rounds != 0:
        raise SystemExit(f"{args.run}: needs a run without rounds (its rows then each answer their own query)")
    loop, _, _ = build_loop(cfg, args.run)  # reads the run's labels and prior frames back; writes nothing
    data = loop.dataset(0)
    held_out = np.random.default_rng(SPLIT_SEED).random(len(data)) < args.holdout
    train_weights = np.where(held_out, 0.0, data.weights)
    x = torch.as_tensor(data.cg_positions_nm[held_out], dtype=torch.float32)
    f = torch.as_tensor(data.cg_forces_kJ_mol_nm[held_out], dtype=torch.float32)
    w = torch.as_tensor(data.weights[held_out], dtype=torch.float32)

    prior_alone = weighted_force_mse(CGSchNet(loop.mapping.bead_types, n_interactions=0, prior=loop.prior).forces(x, create_graph=False), f, w)
    rows = []
    for text in args.fits:
        steps, lr = parse_fit(text)
        options = FitOptions(steps=steps, batch_size=cfg.fit.batch_size, lr=lr, final_lr_factor=cfg.fit.final_lr_factor)
        predictions, losses, walls = [], [], []
        for init in args.inits:
            torch.manual_seed(init)
            model = loop.new_model()
            start = time.perf_counter()
            fit_force_matching(model, data.cg_positions_nm, data.cg_forces_kJ_mol_nm, train_weights, options, seed=init)
            walls.append(time.perf_counter() - start)
            predictions.append(model.forces(x, create_graph=False))
            losses.append(weighted_force_mse(predictions[-1], f, w))
            print(f"{text} init {init}: held-out MSE {losses[-1]:.0f} ({walls[-1]:.0f} s)", flush=True)
        disagreement = [weighted_force_mse(a, b, w) for a, b in itertools.combinations(predictions, 2)]
        rows.append({"fit": text, "steps": steps, "lr": lr, "held_out_mse": losses, "signal": [prior_alone - m for m in losses],
                     "disagreement": disagreement, "wall_s": walls})
    result = {"run": str(args.run), "n_rows": len(data), "n_held_out": int(held_out.sum()), "prior_alone_mse": prior_alone,
              "inits": args.inits, "rows": rows, "device": f"{cpu_model()}, {torch.get_num_threads()} threads"}
    save_json_atomic(result, HERE / "results" / f"{args.label}.json")
    lines = [f"Held-out rows: {result['n_held_out']} of {len(data)}; prior alone: MSE {prior_alone:.0f} (kJ/mol/nm)².", "",
             "| fit (steps:lr) | held-out MSE mean ± std | signal (prior MSE − MSE) | disagreement between inits | s per fit |",
             "|---|---|---|---|---|"]
    for row in rows:
        m, s, d = np.array(row["held_out_mse"]), np.array(row["signal"]), np.array(row["disagreement"])
        lines.append(f"| {row['fit']} | {m.mean():.0f} ± {m.std(ddof=1) if len(m) > 1 else float('nan'):.0f} | {s.mean():.0f} | "
                     f"{d.mean() if len(d) else float('nan'):.0f} | {np.mean(row['wall_s']):.0f} |")
    write_atomic(HERE / "results" / f"{args.label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
