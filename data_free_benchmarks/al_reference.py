"""The CG yardstick of the active-learning benchmark: biased walkers with positions, resampled by weight.

    .venv/bin/python data_free_benchmarks/al_reference.py        # ≈ 20 min on 2 cores; rerunning resumes the walkers

1. ``flowcg-reference method=walkers`` for ``aldp_implicit`` with the protocol of the shipped walker
   cross-check (512 walkers, 100 ps well-tempered build with bias factor 6, 20 ps equilibration),
   60 ps recorded per walker, all-atom positions kept at every 4th recorded frame (1 ps apart);
   folder ``data_free_benchmarks/runs/walkers_implicit_positions`` (git-ignored).
2. :func:`flowcg.active.evaluate.save_walker_cg_reference`: 10 000 of those frames drawn with
   probability ∝ their weight (an unweighted Boltzmann sample), mapped to the 5 backbone beads, with
   the plain-MD CG frames TICA is fitted on carried over from the shipped file. Written to
   ``flowcg/pretrained/aldp_implicit/reference_cg.npz``, the default yardstick of ``flowcg-al`` with
   the shipped flow oracle.
3. A check of the result against the shipped (φ, ψ) walker reference (a separate, longer walker run):
   KL64 / TV64 of the resampled frames' backbone dihedrals and the basin populations, beside that
   reference's own noise floor and the score of 10 000 iid draws from its own histogram (the
   binned metrics' sample-size floor). Written to ``results/al_reference.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.evaluate import load_cg_reference, save_walker_cg_reference
from flowcg.analysis.molecular import shipped_reference
from flowcg.analysis.ramachandran import ramachandran_metrics
from flowcg.builders import cpu_model
from flowcg.cg.mapping import CGMapping
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.io import load_npz, save_json_atomic
from flowcg.pretrained import pretrained_dir
from flowcg.targets import load_target

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RUN = HERE / "runs" / "walkers_implicit_positions"
WALKERS = ["method=walkers", "target=aldp_implicit", "walkers.n_walkers=512", "walkers.build_ps=100", "walkers.bias_factor=6",
           "walkers.production_ps=60", "walkers.positions_every=4"]
N_FRAMES = 10_000


def main() -> None:
    subprocess.run([str(BIN / "flowcg-reference"), *WALKERS, f"hydra.run.dir={RUN}"], check=True,
                   env={**os.environ, "WANDB_MODE": "offline"})
    target = load_target("aldp_implicit")
    mapping = CGMapping.aldp_backbone(target.topology)
    shipped = pretrained_dir("aldp_implicit") / "reference_cg.npz"
    save_walker_cg_reference(RUN, mapping, shipped, shipped, n_frames=N_FRAMES)
    backmapper = TorsionBackmapper(InternalCoordinateTransform.from_topology(target.topology), target.positions, mapping)
    reference = load_cg_reference(shipped, mapping, backmapper)
    walkers = shipped_reference(target.name, target.temperature)
    metrics = ramachandran_metrics(walkers, reference.phi, reference.psi)
    walker_run = json.loads((RUN / "metrics.json").read_text())
    result = {"command": " ".join(["flowcg-reference", *WALKERS]), "cg_frames": N_FRAMES,
              "position_frames": len(load_npz(RUN / "positions.npz", keys=["frame"])["frame"]),
              "walker_weight_ess": walker_run["weight_ess"], "walker_wall_time_s": walker_run["wall_time_s"],
              "against_shipped_walker_reference": metrics, "reference_noise_floor": walkers.noise_floor,
              # a perfect sample of N_FRAMES frames scores this on the binned metrics (most 64² bins hold few frames)
              "iid_floor_at_cg_frames": walkers.sample_size_floor(N_FRAMES),
              "device": cpu_model()}
    save_json_atomic(result, HERE / "results" / "al_reference.json")
    print(json.dumps({k: metrics[k] for k in metrics if k.startswith(("kl_64", "tv_64", "basin", "ref_basin"))}, indent=2))


if __name__ == "__main__":
    main()
