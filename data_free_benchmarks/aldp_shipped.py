"""A shipped model (or a training run's model) against the shipped reference, over independent sample sets.

    .venv/bin/python data_free_benchmarks/aldp_shipped.py [--name aldp_implicit] [--seeds 0 1 2] [--n 1000000]
    .venv/bin/python data_free_benchmarks/aldp_shipped.py --run runs/aldp_plain_equal_budget --label aldp_plain_equal_budget

Each set is one real ``flowcg-sample pretrained=<name> n=<n> seed=<s>`` run (``run=<folder>`` with
``--run``; its folder in ``data_free_benchmarks/runs/shipped/<label>/seed<s>``, git-ignored; a
finished set is not drawn again). Its
saved (φ, ψ, log w, in_state) are scored against the walker reference shipped for the target
(``flowcg.analysis.molecular.shipped_reference``; the same numbers ``flowcg-sample`` reports when the
reference was shipped before it ran): Kish ESS, reweighted KL / TV on 64² and 100², basin
populations and their relative errors, next to the reference's own noise floor (two independent
halves of its walkers, or of its time for a plain-MD reference) and to the *iid floor*: what an
exact sample of the set's effective size scores (≈ 0.004 KL64 at 10⁶ on aldp_implicit, so no model
can score below it at that size). The sets are also scored pooled, where that floor is lower. Draws
outside the target's conformational state (:mod:`flowcg.coordinates.state`) have weight 0 and are
left out of the histograms. A peptide is scored residue by residue
against its ``<target>_residue<k>.npz`` references (rows per residue). Results:
``results/<label>_shipped.{json,md}`` (label: the name, or ``--label``).

``--reference <file>`` scores against another dipeptide reference (e.g. the
``ramachandran_reference.npz`` of a replica-exchange ``flowcg-reference`` run) instead; with
``--sets <label>`` the sets already drawn under that label are scored (results under ``--label``).

``--md-series <folder>`` (an unbiased ``flowcg-reference method=walkers`` run, see
:mod:`flowcg.analysis.md_cost`) adds the MD-equivalent speed-up of every set: the MD steps at which
the series' running KL64 against the same shipped reference first reaches the set's KL64_rw,
divided by the model's training energy evaluations (``energy_evaluations_total`` of a ``--run``'s
metrics.json, or ``--evaluations``)::

    .venv/bin/python data_free_benchmarks/aldp_shipped.py --run runs/aldp_recipe_tail8 --label aldp_recipe_tail8 \
        --md-series runs/aldp_implicit_unbiased_walkers
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from flowcg.analysis.md_cost import load_md_series, md_speedup, running_kl
from flowcg.analysis.molecular import per_residue_references, shipped_reference
from flowcg.analysis.ramachandran import ESS_CLIP_FRACTION, RamachandranReference, ramachandran_metrics
from flowcg.builders import cpu_model, load_run
from flowcg.io import load_json, load_npz, save_json_atomic, write_atomic
from flowcg.sampling.importance import kish_ess, pareto_khat
from flowcg.pretrained import load_pretrained

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def draw_set(model: str, label: str, seed: int, n: int) -> Path:
    """The folder of ``flowcg-sample`` set ``seed`` of ``model`` (``pretrained=…`` or ``run=…``),
    drawn now unless already finished."""
    out = HERE / "runs" / "shipped" / label / f"seed{seed}"
    if not (out / "metrics.json").is_file():
        subprocess.run([str(BIN / "flowcg-sample"), model, f"n={n}", f"seed={seed}", f"hydra.run.dir={out}"],
                       check=True, env={**os.environ, "WANDB_MODE": "offline"}, timeout=3600)
    return out


def load_set(folder: Path) -> dict:
    """(φ, ψ) (N, residues) in rad, log w and the in-state mask of a drawn set."""
    data = load_npz(folder / "samples.npz", what="flowcg-sample output", keys=["phi", "psi", "log_w", "in_state"])
    n = len(data["log_w"])
    return {"phi": np.asarray(data["phi"]).reshape(n, -1), "psi": np.asarray(data["psi"]).reshape(n, -1),
            "log_w": np.asarray(data["log_w"]), "in_state": np.asarray(data["in_state"])}


def score_sample(sample: dict, reference) -> dict:
    """Kish ESS (plain and clipped), Pareto k̂ and the share of draws outside the target's state of a
    :func:`load_set` sample, and per residue (one entry for a dipeptide) the reweighted Ramachandran
    metrics and basins of its in-state draws against the reference, with ``iid_floor``: what an exact
    sample as large as the Kish effective size scores against the same reference
    (:meth:`~flowcg.analysis.ramachandran.RamachandranReference.sample_size_floor`). On the 64² grid
    a perfect 10⁶-draw sample scores KL64 ≈ 0.004 against the aldp_implicit walkers, so a set's
    KL64_rw is read against this floor, not against zero."""
    keep, log_w = sample["in_state"], sample["log_w"]
    ess = kish_ess(log_w)
    n_effective = max(int(round(ess * len(log_w))), 1)
    residues = []
    for k, ref in enumerate(per_residue_references(reference, sample["phi"].shape[1])):
        metrics = ramachandran_metrics(ref, sample["phi"][keep, k], sample["psi"][keep, k], log_w[keep])
        metrics.pop("ess"), metrics.pop("ess_clipped")  # of the in-state draws only; the set's ESS counts every draw
        metrics["basin_relative_error_rw"] = {b: abs(metrics[f"basin_{b}_rw"] / metrics[f"ref_basin_{b}"] - 1.0) if metrics[f"ref_basin_{b}"] > 0 else None
                                              for b in ref.basins}
        metrics["iid_floor"] = {"n_effective": n_effective, **ref.sample_size_floor(n_effective, repeats=3)}
        residues.append(metrics)
    return {"n": len(log_w), "ess": ess, "ess_clipped": kish_ess(log_w, clip_fraction=ESS_CLIP_FRACTION), "pareto_khat": pareto_khat(log_w),
            "fraction_outside_state": float(1.0 - keep.mean()), "residues": residues}


def score(folder: Path, sample: dict, reference) -> dict:
    """:func:`score_sample` of the set drawn in ``folder``, with its isomer shares, wall time and device."""
    run = load_json(folder / "metrics.json")
    return {**score_sample(sample, reference), **{key: run[key] for key in ("fraction_d", "fraction_cis", "wall_time_s", "device")}}


def md_speedups(sets: dict, series_dir: Path, reference, evaluations: int) -> dict:
    """The MD-equivalent speed-up of each scored set against the unbiased MD series in ``series_dir``."""
    series = load_md_series(series_dir)
    curve = running_kl(series, reference)
    return {"md_series": str(series_dir), "md_series_label": series.label, "md_series_steps": int(curve.steps[-1]),
            "md_series_final_kl_64": float(curve.kl[-1]), "training_energy_evaluations": evaluations,
            "sets": {seed: md_speedup(m["residues"][0]["kl_64_rw"], evaluations, curve, series.label) for seed, m in sets.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="aldp_implicit", help="a shipped model")
    parser.add_argument("--run", type=Path, default=None, help="a flowcg-train run folder instead of a shipped model")
    parser.add_argument("--label", default=None, help="results name (default: --name, or the run folder's name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--md-series", type=Path, default=None, help="unbiased flowcg-reference walker run: add the MD-equivalent speed-up")
    parser.add_argument("--evaluations", type=int, default=None, help="the model's training energy evaluations (default: a --run's metrics.json)")
    parser.add_argument("--sets", default=None, help="the sets' folder name under runs/shipped/ (default: the label), e.g. to score them against --reference")
    parser.add_argument("--reference", type=Path, default=None,
                        help="score against this Ramachandran reference file (a dipeptide's; e.g. a replica-exchange run's) instead of the shipped one")
    args = parser.parse_args()
    if args.md_series and not (args.run or args.evaluations):
        parser.error("--md-series needs the model's training evaluations: --run, or --evaluations")
    model = f"run={args.run.resolve()}" if args.run else f"pretrained={args.name}"
    label = args.label or (args.run.name if args.run else args.name)
    folders = {seed: draw_set(model, args.sets or label, seed, args.n) for seed in args.seeds}
    run = load_run(args.run) if args.run else load_pretrained(args.name)
    reference = RamachandranReference.load(args.reference) if args.reference else shipped_reference(run.target.name, run.target.temperature)
    if reference is None:
        sys.exit(f"sets drawn in {HERE / 'runs' / 'shipped' / label}; no walker reference is shipped for {run.target.name} to score them against")
    samples = {seed: load_set(folder) for seed, folder in folders.items()}  # each set read once
    sets = {seed: score(folders[seed], samples[seed], reference) for seed in folders}
    references = per_residue_references(reference, len(next(iter(sets.values()))["residues"]))
    result = {"command": " ".join(["python data_free_benchmarks/aldp_shipped.py", *sys.argv[1:]]), "model": model, "label": label,
              "cpu": cpu_model(), "reference": [r.description for r in references], "reference_noise_floor": [r.noise_floor for r in references],
              "reference_basins": [r.basins for r in references], "sets": sets}
    if len(samples) > 1:  # independent draws of the same q, so their log weights share one scale
        pooled = {key: np.concatenate([s[key] for s in samples.values()]) for key in next(iter(samples.values()))}
        result["pooled"] = score_sample(pooled, reference)
    if args.md_series:
        evaluations = args.evaluations or int(load_json(args.run / "metrics.json")["energy_evaluations_total"])
        result["md_speedup"] = md_speedups(sets, args.md_series, references[0], evaluations)
    (HERE / "results").mkdir(exist_ok=True)
    save_json_atomic(result, HERE / "results" / f"{label}_shipped.json")
    basins = list(references[0].basins)
    rows = ["| seed | residue | n | outside state | ESS | ESS clipped | Pareto k̂ | KL64_rw (iid floor) | TV64_rw (iid floor) | KL100_rw | "
            + " | ".join(f"{b} rw (ref)" for b in basins) + " | max basin error |",
            "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(basins) + "---|"]

    def row(name: str, m: dict, k: int, r: dict, ref) -> str:
        cells = " | ".join(f"{r[f'basin_{b}_rw']:.4g} ({ref.basins[b]:.4g})" for b in basins)
        errors = [e for e in r["basin_relative_error_rw"].values() if e is not None]
        floor = r["iid_floor"]
        return (f"| {name} | {k + 1} | {m['n']} | {m['fraction_outside_state']:.2g} | {m['ess']:.3f} | {m['ess_clipped']:.3f} | {m['pareto_khat']:.3f} | "
                f"{r['kl_64_rw']:.4f} ({floor['kl_64']:.4f}) | {r['tv_64_rw']:.4f} ({floor['tv_64']:.4f}) | {r['kl_100_rw']:.4f} | {cells} | {max(errors):.1%} |")

    for seed, m in sets.items():
        rows += [row(str(seed), m, k, r, ref) for k, (r, ref) in enumerate(zip(m["residues"], references))]
    if "pooled" in result:
        rows += [row("pooled", result["pooled"], k, r, ref) for k, (r, ref) in enumerate(zip(result["pooled"]["residues"], references))]
    rows.append("\n*iid floor*: what an exact sample of the row's Kish effective size (ESS × n) scores against the same reference.")
    for k, ref in enumerate(references):
        floor = ref.noise_floor
        rows.append(f"\nResidue {k + 1} reference noise floor: KL64 {floor.get('kl_64', float('nan')):.4f}, TV64 {floor.get('tv_64', float('nan')):.4f}, "
                    f"KL100 {floor.get('kl_100', float('nan')):.4f}. Reference: {ref.description}.")
    if args.md_series:
        speedup = result["md_speedup"]
        rows.append(f"\nMD-equivalent speed-up against {speedup['md_series_label']} ({speedup['md_series_steps']:.3g} steps, final KL64 "
                    f"{speedup['md_series_final_kl_64']:.4f}), {speedup['training_energy_evaluations']:.3g} training evaluations:")
        for seed, sp in speedup["sets"].items():
            figure = f"{sp['md_speedup']:.1f}×" if sp["md_speedup"] is not None else f"> {sp['md_speedup_lower_bound']:.1f}× (never reached)"
            rows.append(f"- seed {seed}: KL64_rw {sp['kl_64_rw_vs_yardstick']:.4f}, MD steps to reach it {sp['md_steps_to_model_kl']:.3g}: {figure}")
    text = ("\n".join(rows) + "\n").encode()
    write_atomic(HERE / "results" / f"{label}_shipped.md", lambda handle: handle.write(text))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
