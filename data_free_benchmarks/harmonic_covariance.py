"""How good is the harmonic standardisation alone? The stiff coordinates scored at the rotors of the minimum.

    .venv/bin/python data_free_benchmarks/harmonic_covariance.py [--targets aldp_implicit ala4_implicit] [--n 20000]

For each target, the internal-coordinate flow's fixed last layer
(:class:`~flowcg.coordinates.harmonic.HarmonicStandardization`) is fitted at the force field's
minimum twice: ``stiff_covariance: diagonal`` (each stiff coordinate by its own width, the others
held fixed) and ``full`` (their joint harmonic covariance, the inverse Hessian block). With
every rotor torsion at the minimum's value, y ~ N(0, I) on the stiff coordinates is pushed
through it: that is an untrained model's density of the stiff part, and the Kish ESS of its
importance weights against exp(−u) (u = U/kT, the same rotors) says how much of the stiff
coordinates' correlated fluctuations a flow would still have to learn. Draws are scored in
float64. Results: ``results/harmonic_covariance.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from flowcg import load_target
from flowcg.builders import cpu_model, internal_transform
from flowcg.coordinates.harmonic import HarmonicStandardization, harmonic_reference, minimized_positions
from flowcg.io import save_json_atomic
from flowcg.sampling import kish_ess

RESULTS = Path(__file__).resolve().parent / "results"


def score(target, transform, reference, n: int, seed: int) -> dict:
    """Kish ESS and Var(log w) of N(0, I) stiff latents at the minimum's rotors."""
    standardization = HarmonicStandardization(reference).double()
    stiff = reference.stiff.bool()
    y = torch.zeros(n, transform.dim, dtype=torch.float64)
    y[:, stiff] = torch.randn(n, int(stiff.sum()), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        ic, log_det_standardization = standardization(y)
        x, log_det_placement = transform.forward(ic)
        log_q = -0.5 * y[:, stiff].square().sum(1) - log_det_standardization - log_det_placement  # up to a constant
        log_w = (-target.energy(x) - log_q).numpy()
    return {"kish_ess": kish_ess(log_w), "var_log_w": float(log_w.var())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["aldp_implicit", "ala4_implicit"])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for name in args.targets:
        start = time.perf_counter()
        target = load_target(name, dtype="float64")
        transform = internal_transform(target).double()
        full = harmonic_reference(target.energy, transform, minimized_positions(target.system, target.positions), covariance="full")
        # the diagonal reference is the full one without its factor: the same widths, one Hessian
        references = {"diagonal": replace(full, correlation=None), "full": full}
        row = {"target": name, "dim": transform.dim, "stiff": int((~transform.rotor_mask).sum())}
        for covariance, reference in references.items():
            row[covariance] = score(target, transform, reference, args.n, args.seed)
        row["wall_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row))
    RESULTS.mkdir(exist_ok=True)
    result = {"command": "data_free_benchmarks/harmonic_covariance.py", "n": args.n, "seed": args.seed,
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": rows}
    save_json_atomic(result, RESULTS / "harmonic_covariance.json")


if __name__ == "__main__":
    main()
