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
fraction of that subsample beyond the bound, and the Pareto k̂ of the set's weights.

In the latent space as well: every fast latent standardised by its conditional location and scale,
t = (z − m(z_s)) / s(z_s), for the top samples and the subsample. A Gaussian latent mapped onto a
rotor's circle by τ = 2 atan(z) leaves q a zero at the image of the seam
(:mod:`flowcg.latent.conditional`); weights that sit at |t| > ``--beyond`` on those rotor latents
say the latent family, not training, caps the tail: reported as the top samples' share of Σw²
held by such draws against the subsample's fraction of them. Writes ``results/weight_tail_<name>.json``.
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
#: samples listed one by one in the JSON (the counts and shares use all ``--top``)
DETAILED = 20


def standardised(run, standardisation: HarmonicStandardization, frames_nm: np.ndarray) -> np.ndarray:
    """y of Cartesian frames (B, N, 3) nm: internal coordinates through the model's standardisation."""
    with torch.no_grad():
        ic, _ = run.model.coordinates.inverse(torch.as_tensor(frames_nm, dtype=torch.float64))
        y, _ = standardisation.inverse(ic.to(standardisation.width.dtype))
    return y.double().numpy()


def standardised_fast_latents(model, frames_nm: np.ndarray) -> np.ndarray:
    """t = (z_fast − m(z_slow)) / s(z_slow) of Cartesian frames (B, N, 3) nm."""
    with torch.no_grad():
        z_slow, z_fast = model.encode(torch.as_tensor(frames_nm, dtype=next(model.parameters()).dtype))
        mean, log_std = model.latent.fast.mean_and_log_std(z_slow)
        return ((z_fast - mean) * torch.exp(-log_std)).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the flowcg-train run folder the set was drawn from")
    parser.add_argument("--set", type=Path, required=True, help="a flowcg-sample output folder (samples.npz, samples.dcd, topology.pdb)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--beyond", type=float, default=4.0, help="|t| beyond which a rotor latent counts as far out")
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
    rotors = run.model.latent.fast.cauchy_mask.nonzero().ravel().tolist()  # the circle-embedded rotor latents (flowcg.flows.build)
    t_top, t_typical = (np.abs(standardised_fast_latents(run.model, frames)[:, rotors]) for frames in (top, typical))
    far_top, far_typical = t_top.max(1) > args.beyond, t_typical.max(1) > args.beyond
    w_top = np.exp(log_w[order] - log_w[order[0]])
    samples = []
    for rank, (index, y, t) in enumerate(zip(order, y_top, t_top)):
        extreme = np.argsort(-np.abs(y))[:3]
        samples.append({"rank": rank, "index": int(index), "log_w_above_median": float(log_w[index] - median),
                        "most_extreme": [{"coordinate": names[j], "y": float(y[j])} for j in extreme],
                        "rotor_latent": {"fast_index": rotors[int(t.argmax())], "abs_t": float(t.max())}})
    result = {"run": str(args.run), "set": str(args.set), "tail_bound": bound, "pareto_khat": pareto_khat(log_w),
              "typical_abs_y_99_99_percentile": float(np.percentile(np.abs(y_typical), 99.99, axis=0).max()),
              "typical_fraction_beyond_bound": float((np.abs(y_typical) > bound).any(axis=1).mean()),
              "top_at_bound": int(sum(abs(s["most_extreme"][0]["y"]) > 0.9 * bound for s in samples)),
              "rotor_latents": rotors, "rotor_latent_kind": "cauchy" if run.model.latent.fast.has_cauchy else "gaussian",
              "beyond": args.beyond, "top_with_far_rotor_latent": int(far_top.sum()),
              "top_share_of_w2_with_far_rotor_latent": float((w_top[far_top] ** 2).sum() / (w_top**2).sum()),
              "typical_fraction_with_far_rotor_latent": float(far_typical.mean()),
              "samples": samples[:DETAILED], "cpu": cpu_model()}
    name = args.name or f"{args.set.parent.name}_{args.set.name}"
    save_json_atomic(result, HERE / "results" / f"weight_tail_{name}.json")
    for s in samples[:DETAILED]:
        print(s["rank"], f"{s['log_w_above_median']:+.2f}", ", ".join(f"{e['coordinate']} {e['y']:+.2f}" for e in s["most_extreme"]),
              f"| rotor latent {s['rotor_latent']['fast_index']} |t| {s['rotor_latent']['abs_t']:.2f}")
    print({k: result[k] for k in ("tail_bound", "pareto_khat", "typical_abs_y_99_99_percentile", "typical_fraction_beyond_bound", "top_at_bound",
                                  "top_with_far_rotor_latent", "top_share_of_w2_with_far_rotor_latent", "typical_fraction_with_far_rotor_latent")})


if __name__ == "__main__":
    main()
