"""Alanine dipeptide flagship: the data-free runs against long reference MD.

    .venv/bin/python data_free_benchmarks/aldp.py --reference outputs/reference/aldp_implicit_long \
        [--walkers outputs/reference/aldp_implicit_walkers] [--md-walkers outputs/reference/aldp_implicit_unbiased_walkers] \
        [--only NAME ...] [--n 100000] [--repeats 1] [--train]

Arms (each a real ``flowcg-train`` run in ``data_free_benchmarks/runs/aldp/<name>``, git-ignored):

* ``flagship``: ``experiment=aldp_implicit`` (tempered from 1200 K, 6-component wrapped-normal
  mixture prior on φ, ψ);
* ``atan_slow_prior``: the first flagship, whose slow prior was a Gaussian mixture pushed through
  2 atan onto the circle (``model.slow_prior=gaussian``);
* ``no_tempering``: ``atan_slow_prior`` at β = 1 throughout (``train/schedule=constant``), same
  step count;
* ``single_gaussian``: ``atan_slow_prior`` with one mixture component (``model.n_components=1``).

With ``--train`` missing runs are trained (interrupted ones resumed); otherwise only finished runs
are evaluated. Evaluation draws ``--n`` fresh one-shot samples per run and compares them with the
reference MD (``flowcg-reference`` output): Ramachandran KL/TV (64², 100²; raw and reweighted),
basin populations and their relative error, Kish ESS (and clipped), the training energy
evaluations and wall time, and the MD-equivalent speed-up:

    speed-up = MD steps the reference needs to reach the model's KL / the model's training evaluations

(when the MD series never gets there, its length gives a lower bound, ``md_speedup_lower_bound``).

Two references. ``--reference`` is plain MD (``flowcg-reference method=md``), a time series.
``--walkers`` is the far larger biased multiple-walker reference (``flowcg-reference
method=walkers``, weighted frames; :mod:`flowcg.md.walkers`). With ``--walkers`` every
accuracy metric is taken against the walkers, and the speed-up compares the running KL of the
whole plain-MD series (one MD step = one energy evaluation) with the model's KL, both against the
walkers. Without it, the plain MD is split in halves: the running KL of the first half and the
model's KL are both measured against the second half, so neither side is compared with itself.

``--md-walkers`` (with ``--walkers``) takes the speed-up's MD series from an *unbiased* multiple-walker
run instead (``flowcg-reference method=walkers walkers.build_ps=0 walkers.hill_height_kj_mol=0
walkers.equilibration_ps=0``): plain Langevin MD of many walkers at once, all started from the same
minimised structure, its frames in time-major order, so that frame k closes k save intervals of
MD, k · steps_per_frame aggregate MD steps. Batched on one core it reaches ~25x the aggregate
length of one OpenMM trajectory in the same wall time, long enough for αL to be visited often.
``--speedup-only`` recomputes just the speed-ups of the arms already recorded, from their KL64
against the walkers, drawing no samples.
Results: ``results/aldp_implicit.json`` and ``results/aldp_implicit.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from flowcg.analysis.evaluate import evaluate_samples  # noqa: E402
from flowcg.analysis.md_cost import MDCostCurve, MDSeries, load_md_series, md_speedup, running_kl  # noqa: E402
from flowcg.analysis.molecular import Reference, load_reference  # noqa: E402
from flowcg.analysis.ramachandran import BASINS, basin_populations, phi_psi, ramachandran_kl  # noqa: E402
from flowcg.builders import load_run  # noqa: E402
from flowcg.sampling import draw_samples, kish_ess, normalized_weights  # noqa: E402

BIN = Path(sys.executable).parent
ESS_BLOCK = 100_000
#: the first flagship put the slow latents through 2 atan (a seam opposite the energy minimum);
#: the ablations were run against it, with the same overrides
ATAN = ["experiment=aldp_implicit", "model.slow_prior=gaussian", "model.prior_init_spread=3.0"]


def conditional_round(parent: str) -> list[str]:
    """Overrides of 1500 steps at beta = 1 from the arm ``parent``, half of each batch conditional on a
    uniform (phi, psi), then a defensive prior refit (32 components, 200 000 draws, 30 % uniform)."""
    return ["experiment=aldp_implicit", f"init_from={HERE / 'runs' / 'aldp' / parent}", "train/schedule=constant",
            "train.final_steps=1500", "train.batch_size=1024", "train.lr=1e-4", "train.final_lr_factor=0.1",
            "train.slow_uniform_fraction=0.5", "prior_refit.n_components=32", "prior_refit.rounds=1",
            "prior_refit.n_samples=200000", "prior_refit.uniform_fraction=0.3"]


ARMS = {
    "flagship": ["experiment=aldp_implicit"],
    "atan_slow_prior": ATAN,
    "no_tempering": [*ATAN, "train/schedule=constant"],
    "single_gaussian": [*ATAN, "model.n_components=1"],
    # the flagship trained on at beta = 1 with a 2x larger batch and a lower learning rate;
    # its cost includes the flagship's (energy_evaluations_total)
    "flagship_continued": ["experiment=aldp_implicit", f"init_from={HERE / 'runs' / 'aldp' / 'flagship'}", "train/schedule=constant",
                           "train.final_steps=2500", "train.batch_size=1024",
                           "train.lr=2e-4", "train.final_lr_factor=0.05"],
    # the continued flagship with its slow prior refit to importance-weighted draws (no training
    # step): 24 wrapped-normal components, 2 rounds of 100 000 draws (flowcg.training.prior_refit)
    "flagship_refit": ["experiment=aldp_implicit", f"init_from={HERE / 'runs' / 'aldp' / 'flagship_continued'}",
                       "train/schedule=constant", "train.final_steps=0", "prior_refit.n_components=24", "prior_refit.rounds=2"],
    # reverse KL at beta = 1 with the refit 24-component prior, then one more refit round
    "flagship_refit_polished": ["experiment=aldp_implicit", f"init_from={HERE / 'runs' / 'aldp' / 'flagship_refit'}",
                                "train/schedule=constant", "train.final_steps=800", "train.batch_size=1024", "train.lr=1e-4",
                                "train.final_lr_factor=0.1", "prior_refit.n_components=24", "prior_refit.rounds=1"],
    # the refit model trained on with a quarter of each batch conditional on a uniform (phi, psi)
    # (train.slow_uniform_fraction: q(x | phi, psi) learns the rare basins too), then refit from a
    # defensive proposal with 30 % of the draws at a uniform (phi, psi)
    "flagship_conditional": ["experiment=aldp_implicit", f"init_from={HERE / 'runs' / 'aldp' / 'flagship_refit'}",
                             "train/schedule=constant", "train.final_steps=1000", "train.batch_size=1024", "train.lr=1e-4",
                             "train.final_lr_factor=0.1", "train.slow_uniform_fraction=0.25", "prior_refit.n_components=24",
                             "prior_refit.rounds=2", "prior_refit.uniform_fraction=0.3"],
    # one more defensive refit of flagship_conditional, with more components and draws (no training step)
    "flagship_conditional_refit": ["experiment=aldp_implicit", f"init_from={HERE / 'runs' / 'aldp' / 'flagship_conditional'}",
                                   "train/schedule=constant", "train.final_steps=0", "prior_refit.n_components=32",
                                   "prior_refit.rounds=1", "prior_refit.n_samples=200000", "prior_refit.uniform_fraction=0.3"],
    # flagship_conditional_refit trained on with half of each batch conditional on a uniform
    # (phi, psi) (the conditional q(x | s) in alphaL still spread its log weights 5x wider than in
    # beta), then refit; and a second round of the same
    "flagship_conditional_more": conditional_round("flagship_conditional_refit"),
    "flagship_conditional_more2": conditional_round("flagship_conditional_more"),
}


def train(name: str, run_dir: Path) -> None:
    resume = ["resume=true"] if (run_dir / "checkpoint.pt").is_file() else []
    # each arm is one run of the lineage that conf/recipe/aldp.yaml now runs as a single recipe
    command = [str(BIN / "flowcg-train"), *ARMS[name], "recipe=plain", "logger=none", "n_samples=10000", f"hydra.run.dir={run_dir}", *resume]
    if name == "no_tempering":  # same number of optimisation steps as the tempered run's stages + final stage
        tempered = json.loads((run_dir.parent / "atan_slow_prior" / "metrics.json").read_text())
        command.append(f"train.final_steps={tempered['steps']}")
    print("running:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def _own_wall_time(metrics: dict) -> float:
    """Wall time a run spent on its model, in s: training plus a prior refit."""
    return metrics["train_wall_time_s"] + metrics.get("prior_refit_wall_time_s", 0.0)


def _inherited_wall_time(run_dir: Path) -> float:
    """Model wall time of the runs a warm-started run descends from (init_from), in s."""
    init_from = OmegaConf.load(run_dir / "config.yaml").get("init_from")
    if not init_from:
        return 0.0
    parent = Path(init_from)
    return _own_wall_time(json.loads((parent / "metrics.json").read_text())) + _inherited_wall_time(parent)


#: metrics whose spread over independent sample sets ``--repeats`` reports
SPREAD_KEYS = ("ess", "kl_64_rw", "tv_64_rw", "basin_beta_rw", "basin_alpha_R_rw", "basin_alpha_L_rw")


def spread(run, first: dict, reference: Reference, n: int, seeds: range) -> dict:
    """Mean, standard deviation and values of SPREAD_KEYS over independent sets of n samples: the
    metrics ``first`` of one set, then fresh sets drawn with ``seeds``."""
    sets = [first]
    for seed in seeds:
        torch.manual_seed(seed)
        sets.append(evaluate_samples(run.target, draw_samples(run.model, run.target, n, batch_size=10_000), reference))
    return {key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "values": v}
            for key in SPREAD_KEYS for v in [[float(m[key]) for m in sets]]}


def evaluate(run_dir: Path, md: MDSeries, walkers: Reference | None, curve: MDCostCurve | None, n: int, seed: int = 0,
             repeats: int = 1) -> dict:
    """Metrics of ``n`` fresh samples of a run against the walkers (else the plain MD) and its MD speed-up:
    with the walkers, from ``curve``, the running KL of the series ``md`` against them; without, from the
    first half of ``md`` against the second. With ``repeats`` > 1 also their spread over that many sets."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    run = load_run(run_dir, device="cpu")
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluations = trained.get("energy_evaluations_total", trained["energy_evaluations"])
    wall = _own_wall_time(trained) + _inherited_wall_time(run_dir)
    samples = draw_samples(run.model, run.target, n, batch_size=10_000)
    reference = walkers or md.reference
    metrics = evaluate_samples(run.target, samples, reference)
    # Kish ESS of heavy-tailed weights falls as N grows (one draw can hold most of the mass), so the
    # spread over disjoint sets of 100 000 is reported beside the ESS of all n
    blocks = [kish_ess(samples.log_w[i : i + ESS_BLOCK]) for i in range(0, n - ESS_BLOCK + 1, ESS_BLOCK)]
    metrics.update({"ess_100k_median": float(np.median(blocks)), "ess_100k_min": float(np.min(blocks)),
                    "ess_100k_max": float(np.max(blocks))} if len(blocks) > 1 else {})
    if repeats > 1:
        metrics["repeats"] = spread(run, metrics, reference, n, range(seed + 1, seed + repeats))
    for basin in BASINS:
        ref = metrics[f"ref_basin_{basin}"]
        metrics[f"basin_{basin}_rw_relative_error"] = abs(metrics[f"basin_{basin}_rw"] - ref) / ref if ref > 0 else None

    if walkers is not None:
        model_kl, label = metrics["kl_64_rw"], md.label
    else:
        phi, psi, half = md.reference.phi, md.reference.psi, len(md.reference.phi) // 2
        label, yardstick = md.label + ", first half", Reference(phi[half:], psi[half:])
        curve = running_kl(MDSeries(Reference(phi[:half], psi[:half]), md.steps_per_frame, label), yardstick)
        keep = samples.in_state
        phi, psi = phi_psi(samples.x[keep], run.target.topology)
        model_kl = ramachandran_kl(yardstick.phi, yardstick.psi, phi, psi, weights=normalized_weights(samples.log_w[keep]))
    return {
        **metrics,
        **md_speedup(model_kl, evaluations, curve, label),
        "speedup_yardstick": "walkers" if walkers is not None else "second half of the plain MD",
        "energy_evaluations": evaluations,
        "train_wall_time_s": wall,
        "train_device": trained["device"],
        "steps": trained["steps"],
        "stages": trained["stages"],
        "evaluation_wall_time_s": time.perf_counter() - started,
    }


COLUMNS = ["ess", "ess_100k_median", "ess_clipped", "kl_64", "kl_64_rw", "tv_64_rw", "kl_100_rw", "basin_beta_rw", "basin_alpha_R_rw", "basin_alpha_L_rw",
           "fraction_d", "md_speedup", "md_speedup_lower_bound", "energy_evaluations", "train_wall_time_s"]


def table(results: dict) -> str:
    lines = ["| arm | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in results["arms"].items():
        cells = [f"{m[k]:.4g}" if isinstance(m.get(k), float) else str(m.get(k)) for k in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = results["reference"]
    lines.append(f"| plain MD ({ref['ns']:.2f} ns), half vs half | – | – | – | {ref['half_vs_half_kl_64']:.4g} | – | – | – | "
                 f"{ref['basins']['beta']:.4g} | {ref['basins']['alpha_R']:.4g} | {ref['basins']['alpha_L']:.4g} | – | – | – | – | – |")
    walkers = results.get("walkers")
    if walkers:
        lines.append(f"| walkers ({walkers['production_ns_aggregate']:.0f} ns aggregate), walker halves | {walkers['weight_ess']:.3g} | – | – | "
                     f"{walkers['kl_64_walker_halves']:.4g} | – | – | – | {walkers['basins']['beta']:.4g} | {walkers['basins']['alpha_R']:.4g} | "
                     f"{walkers['basins']['alpha_L']:.4g} | – | – | – | – | – |")
    unbiased = results.get("md_walkers")
    if unbiased:
        lines.append(f"| unbiased MD walkers ({unbiased['ns_aggregate']:.0f} ns aggregate), vs walkers | – | – | – | "
                     f"{unbiased['kl_64_vs_walkers']:.4g} | – | – | – | {unbiased['basins']['beta']:.4g} | {unbiased['basins']['alpha_R']:.4g} | "
                     f"{unbiased['basins']['alpha_L']:.4g} | – | – | – | – | – |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="flowcg-reference method=md run folder (plain MD)")
    parser.add_argument("--walkers", help="flowcg-reference method=walkers run folder (the accuracy yardstick)")
    parser.add_argument("--md-walkers", help="unbiased flowcg-reference method=walkers run folder: the speed-up's MD series (needs --walkers)")
    parser.add_argument("--only", nargs="*", default=list(ARMS))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1, help="independent sets of --n samples per arm; > 1 reports their spread")
    parser.add_argument("--train", action="store_true", help="train missing runs first")
    parser.add_argument("--speedup-only", action="store_true",
                        help="recompute only the speed-ups of the recorded arms (their KL64 against the walkers), drawing no samples")
    args = parser.parse_args()

    if (args.md_walkers or args.speedup_only) and not args.walkers:
        parser.error("--md-walkers and --speedup-only need --walkers (the yardstick the running KL is measured against)")
    reference_dir = Path(args.reference)
    md = load_md_series(reference_dir)
    phi, psi, steps_per_frame = md.reference.phi, md.reference.psi, md.steps_per_frame
    walkers = load_reference(args.walkers) if args.walkers else None
    speedup_series = load_md_series(args.md_walkers) if args.md_walkers else md
    # one running-KL curve against the walkers serves every arm
    curve = running_kl(speedup_series, walkers) if walkers is not None else None
    reference_metrics = json.loads((reference_dir / "metrics.json").read_text())

    half = len(phi) // 2
    results = {
        "reference": {
            "path": str(reference_dir), "frames": int(len(phi)), "ns": float(reference_metrics["ns"]),
            "steps_per_frame": steps_per_frame, "basins": basin_populations(phi, psi),
            "half_vs_half_kl_64": ramachandran_kl(phi[half:], psi[half:], phi[:half], psi[:half]),
            "wall_time_s": reference_metrics.get("wall_time_s"),
        },
        "arms": {},
    }
    if walkers is not None:
        walker_metrics = json.loads((Path(args.walkers) / "metrics.json").read_text())
        results["walkers"] = {
            "path": str(args.walkers), "frames": int(len(walkers.phi)), "basins": basin_populations(*walkers),
            **{k: walker_metrics[k] for k in ("production_ns_aggregate", "ns_aggregate", "weight_ess", "kl_64_walker_halves",
                                              "wall_time_s", "settings", "backend")},
            "plain_md_kl_64_vs_walkers": ramachandran_kl(*walkers[:2], phi, psi, ref_weights=walkers.weights),
        }
    if args.md_walkers:
        unbiased = json.loads((Path(args.md_walkers) / "metrics.json").read_text())
        frames = speedup_series.reference
        results["md_walkers"] = {
            "path": str(args.md_walkers), "frames": int(len(frames.phi)), "steps_per_frame": speedup_series.steps_per_frame,
            "basins": basin_populations(frames.phi, frames.psi),
            **{k: unbiased[k] for k in ("ns_aggregate", "wall_time_s", "settings", "backend")},
            "kl_64_vs_walkers": float(curve.kl[-1]),  # the running KL at the series' full length
        }
    out = HERE / "results" / "aldp_implicit.json"
    if out.is_file():
        results["arms"] = json.loads(out.read_text()).get("arms", {})
    for name in args.only:
        if args.speedup_only:
            if name in results["arms"]:
                arm = results["arms"][name]
                arm.update(md_speedup(arm["kl_64_rw"], arm["energy_evaluations"], curve, speedup_series.label))
            continue
        run_dir = HERE / "runs" / "aldp" / name
        if args.train and not (run_dir / "metrics.json").is_file():
            train(name, run_dir)
        if not (run_dir / "metrics.json").is_file():
            print(f"skipping {name}: no finished run in {run_dir}")
            continue
        metrics = evaluate(run_dir, speedup_series, walkers, curve, args.n, repeats=args.repeats)
        metrics["command"] = " ".join(["flowcg-train", *ARMS[name]])
        results["arms"][name] = metrics
        print(name, {k: metrics[k] for k in ("ess", "kl_64_rw", "tv_64_rw", "md_speedup")}, flush=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    (HERE / "results" / "aldp_implicit.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
