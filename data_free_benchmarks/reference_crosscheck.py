"""Two Ramachandran references of one target side by side: do independent runs agree within their floors?

    .venv/bin/python data_free_benchmarks/reference_crosscheck.py --label aldp_implicit_reference_crosscheck \\
        flowcg/targets/data/references/aldp_implicit.npz runs/walkers_implicit_b100/ramachandran_reference.npz

Each argument is a reference file (``RamachandranReference.save``: a shipped one, or the
``ramachandran_reference.npz`` of a ``flowcg-reference`` run). Every later file is compared with the
first: basin populations and their relative differences, KL and TV on the 64² and 100² grids in both
directions, next to each file's own noise floor (its two halves). Two references made by different
protocols that agree to within their floors cross-validate each other; a disagreement larger
than both floors means at least one is not converged. Results: ``results/<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowcg.analysis.ramachandran import RamachandranReference

RESULTS = Path(__file__).resolve().parent / "results"


def compare(first: RamachandranReference, other: RamachandranReference) -> dict:
    """Basins of ``other`` relative to ``first`` and their disagreement both ways."""
    return {
        "basin_relative_difference": {name: other.basins[name] / value - 1.0 for name, value in first.basins.items() if value > 0},
        "first_vs_other": first.disagreement(other),
        "other_vs_first": other.disagreement(first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("references", nargs="+", type=Path, help="reference files; the first is the one the others are compared with")
    parser.add_argument("--label", required=True, help="results/<label>.{json,md}")
    args = parser.parse_args()
    if len(args.references) < 2:
        parser.error("give at least two reference files")
    references = [RamachandranReference.load(path) for path in args.references]
    record = {
        "command": "python data_free_benchmarks/reference_crosscheck.py --label " + args.label + " " + " ".join(map(str, args.references)),
        "references": [{"path": str(path), "basins": ref.basins, "noise_floor": ref.noise_floor, "description": ref.description}
                       for path, ref in zip(args.references, references)],
        "comparisons": [{"other": str(path), **compare(references[0], ref)} for path, ref in zip(args.references[1:], references[1:])],
    }
    basin_names = list(references[0].basins)
    lines = ["| reference | " + " | ".join(basin_names) + " | KL64 floor | TV64 floor | KL64 vs first (both ways) | TV64 vs first |",
             "|---|" + "---|" * (len(basin_names) + 4)]
    for index, (path, ref) in enumerate(zip(args.references, references)):
        cells = [f"{ref.basins[name]:.5g}" for name in basin_names]
        floor = [f"{ref.noise_floor.get(key, float('nan')):.4f}" for key in ("kl_64", "tv_64")]
        if index:
            c = record["comparisons"][index - 1]
            versus = [f"{c['first_vs_other']['kl_64']:.4f} / {c['other_vs_first']['kl_64']:.4f}", f"{c['first_vs_other']['tv_64']:.4f}"]
        else:
            versus = ["–", "–"]
        lines.append(f"| {path} | " + " | ".join(cells + floor + versus) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.label}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{args.label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
