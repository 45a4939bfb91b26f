"""Probe: a trained peptide model's slow prior refitted jointly on per-state weights, with and without a defensive share.

    .venv/bin/python data_free_benchmarks/slow_refit_probe.py --run runs/ala4_s37_full --label ala4_s37_full

Loads a ``flowcg-train`` run folder, scores ``--sets`` sets of ``--score`` one-shot draws (Kish ESS,
ESS with the top 0.1 % of weights clipped, Pareto k̂), refits the slow prior as the recipe's last
phase does (:func:`flowcg.training.prior_refit.refit_slow_prior` with ``per_state_draws`` and
``slow_blocks: joint``), and scores again with the refitted joint mixture π_J alone and with
(1 − ε) π_J + ε π_old for each ``--eps``: the trained product prior kept as a defensive share, so
that a combination of basins the joint fit misses keeps density ε π_old and the weights there are at
most 1/ε times the old ones. The defensive mixture is built here only (the package cannot save it);
it measures what that share would add. Results: ``results/<label>_slow_refit_probe.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from flowcg import load_target
from flowcg.builders import cpu_model, load_run
from flowcg.sampling import draw_samples, kish_ess, pareto_khat
from flowcg.training.prior_refit import PriorRefitConfig, refit_slow_prior

RESULTS = Path(__file__).resolve().parent / "results"
CLIP_FRACTION = 0.001


class DefensiveSlowPrior(nn.Module):
    """(1 − ε) main + ε fallback over the slow latents: log density and draws, what sampling needs."""

    def __init__(self, main: nn.Module, fallback: nn.Module, eps: float):
        super().__init__()
        self.main, self.fallback, self.eps = main, fallback, eps
        self.periodic, self.dim = main.periodic, main.dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(math.log1p(-self.eps) + self.main.log_prob(z), math.log(self.eps) + self.fallback.log_prob(z))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        z = self.main.sample(n)
        pick = torch.rand(n) < self.eps
        z[pick] = self.fallback.sample(int(pick.sum()))
        return z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished flowcg-train run folder")
    parser.add_argument("--label", required=True)
    parser.add_argument("--n-samples", type=int, default=131072, help="refit draws per round (states x per-state draws)")
    parser.add_argument("--per-state", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--components", type=int, default=48)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.05, 0.2], help="defensive shares of the old prior (0: none)")
    parser.add_argument("--score", type=int, default=100000, help="draws per scored set")
    parser.add_argument("--sets", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    run = load_run(args.run)
    model, target = run.model, load_target(run.config.target.name, compile=True)

    def score() -> list[dict]:
        sets = []
        for k in range(args.sets):
            torch.manual_seed(100 + k)
            log_w = draw_samples(model, target, args.score, 8192).log_w
            sets.append({"ess": kish_ess(log_w), "ess_clipped": kish_ess(log_w, CLIP_FRACTION), "pareto_khat": pareto_khat(log_w)})
        print(" | ".join(f"ESS {s['ess']:.4f} clipped {s['ess_clipped']:.4f} k {s['pareto_khat']:.2f}" for s in sets), flush=True)
        return sets

    old = copy.deepcopy(model.latent.slow)
    record = {"command": f"python data_free_benchmarks/slow_refit_probe.py --run {args.run} --label {args.label} --n-samples {args.n_samples} "
                         f"--per-state {args.per_state} --rounds {args.rounds} --components {args.components} "
                         f"--eps {' '.join(map(str, args.eps))} --score {args.score} --sets {args.sets}",
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "before": score()}
    started = time.perf_counter()
    config = PriorRefitConfig(n_components=args.components, n_samples=args.n_samples, rounds=args.rounds, per_state_draws=args.per_state,
                              slow_blocks="joint", n_iter=100, batch_size=8192)
    record["refit"] = refit_slow_prior(model, target, config, seed=0)
    record["refit_wall_s"] = time.perf_counter() - started
    joint = model.latent.slow
    record["after"] = {}
    for eps in args.eps:
        model.latent.slow = joint if eps == 0 else DefensiveSlowPrior(joint, old, eps)
        record["after"][str(eps)] = score()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.label}_slow_refit_probe.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
