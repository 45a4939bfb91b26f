"""Where the largest importance weights of a one-shot sample set sit, in the flow's standardised coordinates.

    .venv/bin/python data_free_benchmarks/weight_tail.py --run runs/aldp_recipe_5x \
        --set data_free_benchmarks/runs/shipped/aldp_recipe_5x/seed0 [--top 20] [--name aldp_recipe_5x_seed0]

For the ``--top`` largest weights of a ``flowcg-sample`` set (its ``samples.npz`` and
``samples.dcd``), the internal coordinates of each sample in the units the flow's splines see:
y = (c − c*) / σ for the stiff coordinates (bonds, angles, improper torsions; centre and harmonic
width of the model's :class:`~flowcg.coordinates.harmonic.HarmonicStandardization`). The line
splines act on |y| ≤ ``model.tail_bound`` and are the identity beyond, where the density is the
base Gaussian's: a weight tail made of samples at |y| ≈ tail_bound says the model's tails are too
light there. Also the 99.99th percentile of |y| over an every-100th subsample of the set, the
fraction of that subsample beyond the bound, and the Pareto k̂ of the set's weights. Writes
``results/weight_tail_<name>.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mdtraj as md
import numpy as np
import torch

from flowcg.builders import cpu_model, load_run
from flowcg.coordinates.harmonic import HarmonicStandardization
from flowcg.io import load_npz, save_json_atomic
from flowcg.sampling.importance import pareto_khat

HERE = Path(__file__).resolve().parent


def standardised(run, standardisation: HarmonicStandardization, frames_nm: np.ndarray) -> np.ndarray:
    """y of Cartesian frames (B, N, 3) nm: internal coordinates through the model's standardisation."""
    with torch.no_grad():
        ic, _ = run.model.coordinates.inverse(torch.as_tensor(frames_nm, dtype=torch.float64))
        y, _ = standardisation.inverse(ic.to(standardisation.width.dtype))
    return y.double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the flowcg-train run folder the set was drawn from")
    parser.add_argument("--set", type=Path, required=True, help="a flowcg-sample output folder (samples.npz, samples.dcd, topology.pdb)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--name", default=None, help="results name (default: the set folder's parent and name)")
    args = parser.parse_args()
    run = load_run(args.run)
    log_w = load_npz(args.set / "samples.npz", what="flowcg-sample output", keys=["log_w"])["log_w"].astype(np.float64)
    order = np.argsort(log_w)[::-1][: args.top]
    dcd, pdb = str(args.set / "samples.dcd"), str(args.set / "topology.pdb")
    top = np.concatenate([md.load_frame(dcd, int(i), top=pdb).xyz for i in order])
    typical = md.load(dcd, top=pdb, stride=100).xyz
    standardisation = next(m for m in run.model.modules() if isinstance(m, HarmonicStandardization))
    stiff = (~standardisation.wrapped | (standardisation.width != 1)).numpy()
    coordinates = run.model.coordinates
    y_top, y_typical = standardised(run, standardisation, top)[:, stiff], standardised(run, standardisation, typical)[:, stiff]
    names = [f"{coordinates.kind[i]} {'-'.join(str(int(a)) for a in coordinates.atom_indices[i])}" for i in np.flatnonzero(stiff)]
    bound = float(run.config.model.tail_bound)
    median = float(np.median(log_w))
    samples = []
    for rank, (index, y) in enumerate(zip(order, y_top)):
        extreme = np.argsort(-np.abs(y))[:3]
        samples.append({"rank": rank, "index": int(index), "log_w_above_median": float(log_w[index] - median),
                        "most_extreme": [{"coordinate": names[j], "y": float(y[j])} for j in extreme]})
    result = {"run": str(args.run), "set": str(args.set), "tail_bound": bound, "pareto_khat": pareto_khat(log_w),
              "typical_abs_y_99_99_percentile": float(np.percentile(np.abs(y_typical), 99.99, axis=0).max()),
              "typical_fraction_beyond_bound": float((np.abs(y_typical) > bound).any(axis=1).mean()),
              "top_at_bound": int(sum(abs(s["most_extreme"][0]["y"]) > 0.9 * bound for s in samples)),
              "samples": samples, "cpu": cpu_model()}
    name = args.name or f"{args.set.parent.name}_{args.set.name}"
    save_json_atomic(result, HERE / "results" / f"weight_tail_{name}.json")
    for s in samples:
        print(s["rank"], f"{s['log_w_above_median']:+.2f}", ", ".join(f"{e['coordinate']} {e['y']:+.2f}" for e in s["most_extreme"]))
    print({k: result[k] for k in ("tail_bound", "pareto_khat", "typical_abs_y_99_99_percentile", "typical_fraction_beyond_bound", "top_at_bound")})


if __name__ == "__main__":
    main()
