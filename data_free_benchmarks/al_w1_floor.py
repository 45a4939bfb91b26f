"""The floor of the AL benchmark's yardstick: its metrics between two halves of the reference itself.

    .venv/bin/python data_free_benchmarks/al_w1_floor.py [--splits 10] [--label al_w1_floor]

The AL benchmark (``al_aldp.py``) scores each arm's final CG MD against the CG reference shipped with
the oracle's model (``flowcg/pretrained/aldp_implicit/reference_cg.npz``: 10 000 biased-walker frames
resampled by weight) through ``CGReference.evaluate``: the joint W1 on TIC 0–1 between 2 000-point
subsamples, the exact 1-D W1 per TIC, KL64 and the basins. Here the same code compares one random
half of the reference (5 000 frames) with the other, ``--splits`` times: an exact sample of the
reference's own ensemble scores this, so an arm's figure is only meaningful above it. (With 10⁵ model
frames against all 10 000 reference frames the 1-D W1 floors are somewhat lower than between halves;
the joint W1 subsamples both sides to 2 000 points either way.) Results:
``results/<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.evaluate import CGReference, load_cg_reference
from flowcg.builders import cpu_model
from flowcg.cg.mapping import CGMapping
from flowcg.io import save_json_atomic, write_atomic
from flowcg.pretrained import load_pretrained, pretrained_dir

HERE = Path(__file__).resolve().parent
#: KL64 is left out: between 5 000-frame halves its empty bins dominate (≈ 1.2), which says nothing of 10⁵ model frames
METRICS = ("w1", "w1_tic0", "w1_tic1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--lag-frames", type=int, default=20, help="the TICA lag of the benchmark (reference_lag_frames)")
    parser.add_argument("--label", default="al_w1_floor")
    args = parser.parse_args()
    run = load_pretrained("aldp_implicit")
    mapping = CGMapping.aldp_backbone(run.target.topology)
    backmapper = TorsionBackmapper(run.model.coordinates, run.target.positions, mapping)
    path = pretrained_dir("aldp_implicit") / "reference_cg.npz"
    reference = load_cg_reference(path, mapping, backmapper, args.lag_frames)
    rng = np.random.default_rng(0)
    rows = []
    for split in range(args.splits):
        order = rng.permutation(len(reference.frames_nm))
        first, second = np.array_split(order, 2)
        half = CGReference(reference.frames_nm[first], reference.tica, reference.phi[first], reference.psi[first], args.lag_frames)
        metrics = half.evaluate(reference.frames_nm[second], backmapper, seed=split)
        rows.append({key: float(metrics[key]) for key in METRICS})
    summary = {key: {"mean": float(np.mean([r[key] for r in rows])), "min": float(np.min([r[key] for r in rows])),
                     "max": float(np.max([r[key] for r in rows]))} for key in METRICS}
    result = {"reference": str(path), "n_frames": len(reference.frames_nm), "splits": rows, "summary": summary,
              "lag_frames": args.lag_frames, "device": f"{cpu_model()}, default threads"}
    save_json_atomic(result, HERE / "results" / f"{args.label}.json")
    lines = [f"Reference halves ({len(reference.frames_nm) // 2} frames each, {args.splits} random splits) of {path.name}:", "",
             "| metric | mean | min | max |", "|---|---|---|---|"]
    lines += [f"| {key} | {v['mean']:.4f} | {v['min']:.4f} | {v['max']:.4f} |" for key, v in summary.items()]
    write_atomic(HERE / "results" / f"{args.label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
