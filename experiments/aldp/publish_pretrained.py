"""Ship a finished alanine-dipeptide run as a package resource (``flowcg/pretrained/<name>``).

    .venv/bin/python experiments/aldp/publish_pretrained.py --run RUN_DIR --name aldp_implicit \
        --reference outputs/reference/aldp_implicit_long

Copies the config and the float32 weights, the reference MD's φ/ψ (for the Ramachandran and TICA
comparisons of ``flowcg-sample pretrained=<name>``) and writes PROVENANCE.md from the run's
metrics.json and the reference's metrics.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowcg.analysis.molecular import load_reference
from flowcg.pretrained import publish


def _refit_line(trained: dict) -> str:
    rounds = trained["prior_refit"]
    ess = ", ".join(f"{r['ess_of_draws']:.3f}" for r in rounds)
    return (f"- Slow prior refit after training (`prior_refit`): {len(rounds)} round(s) of {rounds[0]['n_samples']} "
            f"importance-weighted draws (Kish ESS of the draws, per round: {ess}), {trained['prior_refit_wall_time_s']:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--reference", type=Path, help="flowcg-reference folder of the same target")
    parser.add_argument("--command", default=None, help="the training command, for the provenance note")
    args = parser.parse_args()

    trained = json.loads((args.run / "metrics.json").read_text())
    lines = [
        f"# {args.name}: provenance",
        "",
        f"- Training: `{args.command or 'flowcg-train experiment=' + args.name}` (data-free: no MD frame used).",
        f"- Device: {trained['device']}; training wall time {trained['train_wall_time_s']:.0f} s; "
        f"{trained['energy_evaluations']:.3g} energy evaluations; {trained['steps']} steps in {trained['stages']} stages.",
        *([f"- Warm-started from another run (`init_from`); with its training the total is "
           f"{trained['energy_evaluations_total']:.3g} energy evaluations."] if trained.get("energy_evaluations_total", 0) > trained["energy_evaluations"] else []),
        *([_refit_line(trained)] if trained.get("prior_refit") else []),
        f"- At publication: Kish ESS {trained['ess']:.4f} on {trained['n_samples']} one-shot samples.",
    ]
    reference = None
    if args.reference is not None:
        reference = load_reference(args.reference)
        ref = json.loads((args.reference / "metrics.json").read_text())
        lines.append(
            f"- reference.npz: φ/ψ (float32, rad) of {ref['ns']:.2f} ns of `flowcg-reference target={ref['target']}` "
            f"({ref['platform']} platform, LangevinMiddle 1 fs, 1 ps⁻¹, {ref['temperature_K']} K, one frame per ps)."
        )
    folder = publish(args.run, args.name, reference, "\n".join(lines) + "\n")
    print(f"published {args.run} as {folder}")


if __name__ == "__main__":
    main()
