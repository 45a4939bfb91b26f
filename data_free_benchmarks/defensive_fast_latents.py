"""Would heavier latent tails bound a trained model's largest importance weights? A post-hoc probe.

    .venv/bin/python data_free_benchmarks/defensive_fast_latents.py [--name ala4_implicit | --run RUN] \
        [--eps 0 0.001 0.01] [--seeds 0 1 2] [--n 200000]

The defensive Cauchy share that ``model.rotor_cauchy_weight`` gives the rotor latents
(:mod:`flowcg.latent.conditional`: (1 − ε) N(m, s²) + ε C(m, s) per dimension, q stays exact) is
given post hoc to *every* fast latent of a trained model, weights unchanged, and the model's one-shot
Kish ESS, clipped ESS (the largest 10⁻⁴ of the weights clipped, as in ``metrics.json``) and Pareto k̂
are measured on the same seeds for each ε; ε = 0 is the model as trained. If the largest weights sat
at far latents, a small ε would raise the Kish ESS towards the clipped one; if they are a joint
misfit of many coordinates at moderate deviations, ε only costs the bulk its share.
Writes ``results/defensive_fast_latents_<name or label>.json``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flowcg.builders import cpu_model, load_run
from flowcg.io import save_json_atomic
from flowcg.sampling.importance import kish_ess, pareto_khat
from flowcg.sampling.sampler import draw_samples

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--name", default="ala4_implicit", help="a model of flowcg/pretrained")
    which.add_argument("--run", help="a flowcg-train run folder instead")
    parser.add_argument("--label", help="names the output (default: --name or the run folder's name)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.001, 0.01])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    folder = Path(args.run) if args.run else HERE.parent / "flowcg" / "pretrained" / args.name
    label = args.label or (folder.name if args.run else args.name)
    run = load_run(folder)
    fast = run.model.latent.fast
    trained = (fast.cauchy_mask.clone(), fast.cauchy_weight)
    rows = []
    for eps in args.eps:
        mask, weight = (torch.ones_like(trained[0]), eps) if eps > 0 else trained
        fast.cauchy_mask, fast.cauchy_weight = mask, weight
        fast.has_cauchy = bool(mask.any()) and weight > 0
        for seed in args.seeds:
            torch.manual_seed(seed)
            start = time.perf_counter()
            log_w = draw_samples(run.model, run.target, args.n).log_w
            row = {"eps": eps, "seed": seed, "kish_ess": kish_ess(log_w), "ess_clipped": kish_ess(log_w, clip_fraction=1e-4),
                   "pareto_khat": pareto_khat(log_w), "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"eps {eps} seed {seed}: Kish ESS {row['kish_ess']:.4f}, clipped {row['ess_clipped']:.4f}, "
                  f"k-hat {row['pareto_khat']:.3f} ({row['seconds']:.0f} s)", flush=True)
    save_json_atomic({"command": "python data_free_benchmarks/defensive_fast_latents.py " + (f"--run {args.run}" if args.run else f"--name {args.name}"),
                      "cpu": cpu_model(), "threads": torch.get_num_threads(), "n": args.n, "rows": rows},
                     HERE / "results" / f"defensive_fast_latents_{label}.json")


if __name__ == "__main__":
    main()
