"""Wall time of the prior refit's EM (``DiagonalGaussianMixture.fit_weighted``) against an earlier commit.

The refits of the aldp recipe (``conf/recipe/aldp.yaml``) fit 24 and 32 wrapped-normal components
to 1e5 and 2e5 importance-weighted draws; in the run that built the shipped model they took 3342 s
of its 5990 s, almost all of it in EM. This benchmark takes real draws of the shipped
``aldp_implicit`` model (z_slow = (φ, ψ) latents, truncated importance weights, as
:func:`flowcg.training.prior_refit.refit_slow_prior` fits them) and times, in one process on the
same draws:

* **per iteration**: ``fit_weighted`` of this checkout and of the baseline commit (``--baseline``,
  default ``10fe65f``; its ``flowcg/latent/mixture.py``, read with ``git show``), ``n_iter`` fixed
  iterations each (``tol = −inf``), at (1e5, 24) and (2e5, 32); the two fits must agree (they do
  the same EM);
* **to convergence**: this checkout with the recipe's settings (≤ 300 iterations, tol 1e-6).

A third row is the Euclidean case of the ``gmm40`` experiment's refit: 100 components fitted to
1e5 exact draws of the 40-mode target (equal weights), the same three timings.

    .venv/bin/python data_free_benchmarks/prior_refit_em.py [--baseline 10fe65f] [--name prior_refit_em]     # ≈ 5 min on 2 cores

writes ``results/<name>.json`` and ``results/<name>.md`` (``--name``, default ``prior_refit_em``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BASELINE_COMMIT = "10fe65f"
#: (draws, n, components): wrapped (φ, ψ) fits of the aldp recipe, and the gmm40 experiment's Euclidean one.
SIZES = (("aldp_implicit", 100_000, 24), ("aldp_implicit", 200_000, 32), ("gmm40", 100_000, 100))


def _baseline_mixture_class(scratch: Path, commit: str):
    source = subprocess.run(["git", "show", f"{commit}:flowcg/latent/mixture.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = scratch / "baseline_mixture.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_mixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DiagonalGaussianMixture


def _fit(mixture_class, z, weights, n_components: int, periodic: bool, **options) -> tuple[float, dict, object]:
    mixture = mixture_class(2, n_components, periodic=periodic).double()
    start = time.perf_counter()
    info = mixture.fit_weighted(z, weights, **options)
    return time.perf_counter() - start, info, mixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="fixed EM iterations per timed fit")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="commit whose fit_weighted is the baseline")
    parser.add_argument("--name", default="prior_refit_em", help="results/<name>.{json,md}")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from flowcg import load_target
    from flowcg.builders import cpu_model
    from flowcg.latent.mixture import DiagonalGaussianMixture
    from flowcg.pretrained import load_pretrained
    from flowcg.sampling import draw_samples, truncated_weights

    torch.manual_seed(0)
    run = load_pretrained("aldp_implicit")
    target = load_target("aldp_implicit", compile=True)
    n_max = max(n for name, n, _ in SIZES if name == "aldp_implicit")
    start = time.perf_counter()
    draws = draw_samples(run.model, target, n_max)
    draw_s = time.perf_counter() - start
    gmm40_draws = load_target("gmm40").sample_exact(max(n for name, n, _ in SIZES if name == "gmm40"), seed=0).double()
    points = {"aldp_implicit": (torch.as_tensor(draws.z_slow), torch.as_tensor(truncated_weights(draws.log_w))),
              "gmm40": (gmm40_draws, torch.ones(len(gmm40_draws), dtype=torch.float64))}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        baseline_class = _baseline_mixture_class(Path(scratch), args.baseline)
        for name, n, k in SIZES:
            z, w = points[name][0][:n], points[name][1][:n]
            periodic = name == "aldp_implicit"
            fixed = {"n_iter": args.iterations, "tol": -math.inf, "seed": 0}
            new_s, new_info, new_fit = _fit(DiagonalGaussianMixture, z, w, k, periodic, **fixed)
            old_s, old_info, old_fit = _fit(baseline_class, z, w, k, periodic, **fixed)
            agreement = max(float((new_fit.means - old_fit.means).abs().max()),
                            float((new_fit.log_stds - old_fit.log_stds).abs().max()),
                            float((new_fit.logits.log_softmax(0) - old_fit.logits.log_softmax(0)).abs().max()))
            full_s, full_info, _ = _fit(DiagonalGaussianMixture, z, w, k, periodic, seed=0)
            row = {"draws": name, "periodic": periodic, "n_samples": n, "n_components": k, "iterations": args.iterations,
                   "baseline_s_per_iteration": old_s / args.iterations, "new_s_per_iteration": new_s / args.iterations,
                   "speedup": old_s / new_s, "max_parameter_difference": agreement,
                   "log_likelihood_new": new_info["log_likelihood"], "log_likelihood_baseline": old_info["log_likelihood"],
                   "converged_iterations": full_info["iterations"], "converged_s": full_s,
                   "converged_log_likelihood": full_info["log_likelihood"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    record = {"baseline_commit": args.baseline, "rows": rows, "draw_s": draw_s, "n_draws": n_max,
              "threads": torch.get_num_threads(), "cpu_model": cpu_model(),
              "command": f"python data_free_benchmarks/prior_refit_em.py --baseline {args.baseline} --iterations {args.iterations} --name {args.name}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    lines = [f"Prior-refit EM on {n_max} draws of the shipped aldp_implicit model and exact gmm40 draws ({record['cpu_model']}, "
             f"{record['threads']} torch threads; drawing the aldp ones took {draw_s:.0f} s).", "",
             f"| draws | n | components | s/iteration {args.baseline} | s/iteration now | speed-up | max |Δ parameter| | "
             f"to convergence now: iterations, s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['draws']} | {r['n_samples']} | {r['n_components']} | {r['baseline_s_per_iteration']:.2f} | {r['new_s_per_iteration']:.3f} | "
                     f"{r['speedup']:.1f}× | {r['max_parameter_difference']:.1e} | {r['converged_iterations']}, {r['converged_s']:.0f} s |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
