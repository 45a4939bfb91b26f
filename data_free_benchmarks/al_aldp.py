"""Active learning of a CG potential for alanine dipeptide: AL against a static MD, random selection and an "enough data" ceiling.

    .venv/bin/python data_free_benchmarks/al_aldp.py [--jobs 2] [--seeds 0 1 2 3 4] [--reference CG_REFERENCE.npz]
        [--launcher joblib|submitit_local|submitit_slurm|basic] [-o hydra.launcher.partition=cpu ...]

Arms (each a real ``flowcg-al`` run in ``data_free_benchmarks/runs/al_aldp/<arm>/seed<s>``, git-ignored;
rerunning resumes unfinished runs from their journals and skips finished ones). The runs are one
Hydra multirun of ``flowcg-al`` over ``+al_arm=<arms> seed=<seeds>`` (the arms' overrides are the
config group ``data_free_benchmarks/conf/al_arm/``), through the launcher ``--launcher``
(``conf/hydra/launcher/``; joblib: ``--jobs`` runs at a time, one thread each). Each run's log is
``<run>/al.log``; the multirun's output is appended to ``runs/al_aldp/multirun.log``.

* ``al``: ``experiment=al_aldp``, the RMSD-coverage strategy with the flow oracle;
* ``al_md``: ``al_threshold_0.01`` with the seed paper's oracle (32 frames of OpenMM MD restrained at
  the query's (φ, ψ) per query, ``oracle=md``): the oracles compared at the same labels, by W1 and cost;
* ``al_threshold_0.01``: the same with a 0.01 nm coverage threshold (at 0.02 nm the simulated
  frames run out of uncovered candidates after 2–3 rounds, leaving part of the budget unspent);
* ``committee``: queries where a committee of three CG models disagrees most about the forces;
* ``random``: the same loop with random selection among the simulated frames;
* ``static``: no rounds; the whole budget as one initial short MD (``loop.rounds=0``), with the
  same spacing between frames as the initial MD of the other arms, and its prior inverted from
  those frames (``cg_model.prior_draws=0``): the conventional pipeline, no flow anywhere;
* ``al_flow``: AL (0.01 nm) whose initial data are 500 one-shot flow draws resampled by weight
  (``initial.source=flow``) instead of the MD;
* ``random_flow``: al_flow's loop with random selection (what choosing the queries adds);
* ``al_iw``: importance-weighted AL: each round draws 200 candidates among 4 000 one-shot flow
  draws with probability ∝ 0.2/N + 0.8 × (RMSD to the training set), the oracle answers each with
  4 conditional draws, and the labels are weighted by their joint importance weights over the
  pick's probability, so the data stay an equilibrium design (``strategy=importance_sampling``,
  ``loop.candidates=flow``, ``loop.query_weight=importance``);
* ``random_iw``: al_iw with uniform picks (what the preference adds);
* ``flow_draws``: no rounds; the whole budget as one-shot flow draws resampled by weight, the
  data-free static baseline (``al_flow`` against it is what the queries add);
* ``prior_only``: no network (``cg_model.n_interactions=0``): the CG prior alone, inverted from the
  experiment's 20 000 flow draws, which every flow arm starts from; what the labels add is an arm's
  W1 against it;
* ``ceiling``: no rounds; 1000 equilibrium frames of the reference labelled by the oracle (8.6× the
  budget): what the CG model reaches when the data is right, so that the gap between an arm and
  it is the data's error and the ceiling itself the model's.

Equal oracle budget: every arm but the ceiling ends with the same number of labelled all-atom
configurations (initial frames + rounds × queries × draws per query; an AL round may use fewer
when fewer frames pass its threshold, never more). Energy evaluations and wall time are reported
beside it: the MD arms pay ``frame_interval_steps`` steps per frame, the flow oracle one
evaluation per draw.

Yardstick: the CG reference shipped with the oracle's model (``flowcg/pretrained/aldp_implicit/
reference_cg.npz``: biased-walker frames resampled by weight, TICA fitted on a plain MD) unless
``--reference`` names another. Metric: W1 between each arm's final CG MD and the reference, on the
reference TICA's first two components, plus the Ramachandran KL64(ref‖CG MD), the basin
populations and the held-out force-matching loss (``loop.held_out_draws``: what the labels teach at fixed
(φ, ψ), where W1 is at its floor; ``al_force_error.py`` scores runs made before it). The final CG MD (evaluation only) is 64 replicas × 30 ps started from reference frames
(``simulation.final_start_from=reference``: the same spread of starts for every arm and seed), biased
along the CG dihedrals and reweighted (``simulation.final_bias_factor=4``: every replica crosses between
the basins, so the 0.2 % of αL is weighed instead of counted as a few crossings), its first 6 ps
dropped (``COMMON``).
Relative improvement = 1 − W1_AL / W1_baseline on seed means, with the standard error of the
difference of the means, and the paired difference over the seeds both arms ran (arms of one seed
share its network initialisations and flow draws, so their W1 move together). Results: ``results/al_aldp.json`` and ``results/al_aldp.md``. A variant (other
settings for every arm) runs under its own name: ``--name al_aldp_learned -o cg_model.dihedral_prior=learned``
puts its runs in ``runs/al_aldp_learned/`` and its results in ``results/al_aldp_learned.{json,md}``.
``--reevaluate KEY=VALUE ...`` trains nothing: it simulates the last round of the finished runs of
``--name`` again under those settings (e.g. ``simulation.final_bias_factor=4``, a CG MD biased along
the dihedrals and reweighted) in ``runs/<label>/`` and reports that evaluation under ``--label``; a run
whose own config already holds those settings (made with today's ``COMMON``) is reported as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from flowcg.builders import cpu_model
from flowcg.io import save_json_atomic, write_atomic

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
#: default benchmark name: runs in runs/<name>/, results in results/<name>.{json,md}
NAME = "al_aldp"
ARM_CONFIGS = HERE / "conf" / "al_arm"

INITIAL_FRAMES, ROUNDS, QUERIES, DRAWS = 500, 4, 25, 32
BUDGET = INITIAL_FRAMES + ROUNDS * QUERIES * DRAWS
#: overrides of every arm; the final CG MD, which only serves the evaluation, runs 30 ps per replica from frames of the
#: reference, biased along the CG dihedrals (gamma = 4) and reweighted, its first 6 ps dropped (since 2026-12-07, stop 40;
#: runs before it: 100 ps unbiased, reproduced by adding
#: -o simulation.final_n_steps=50000 simulation.final_burn_in_saves=null simulation.final_bias_factor=null)
COMMON = ["experiment=al_aldp", "simulation.final_start_from=reference", "simulation.final_n_steps=15000",
          "simulation.final_burn_in_saves=100", "simulation.final_bias_factor=4"]
#: the arms, each a config of the group al_arm (data_free_benchmarks/conf/al_arm/<arm>.yaml):
#: al_threshold_0.01 lowers the coverage threshold, so that AL spends the whole label budget like the
#: other arms; committee: strategy=committee with three models; random: strategy=random; static:
#: loop.rounds=0 and initial.n_frames = BUDGET; ceiling: loop.rounds=0, initial.source=reference
ARMS = ["al", "al_threshold_0.01", "al_md", "committee", "random", "static", "al_flow", "random_flow", "al_iw", "random_iw", "flow_draws",
        "prior_only", "ceiling"]
#: the arms that choose their queries, each compared with the baselines
STRATEGY_ARMS = ["al", "al_threshold_0.01", "al_md", "committee", "al_flow", "al_iw"]
BASELINES = ["static", "random", "random_flow", "random_iw", "flow_draws", "prior_only"]
#: (arm, against): the same loop with another oracle, compared like a strategy with a baseline
ORACLE_PAIRS = [("al_threshold_0.01", "al_md")]
LAUNCHERS = ["joblib", "submitit_local", "submitit_slurm", "basic"]


class BenchmarkWallTime(Callback):
    """Hydra callback of the multirun: adds each finished job's wall time to its metrics.json
    (``benchmark_wall_s``). It runs inside the jobs, which import this file as the module ``al_aldp``
    (the multirun's PYTHONPATH starts with this folder)."""

    def on_job_start(self, config, **kwargs) -> None:
        self._started = time.perf_counter()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        summary = Path(config.hydra.runtime.output_dir) / "metrics.json"
        if job_return.status == JobStatus.COMPLETED and summary.is_file():
            data = json.loads(summary.read_text())
            data["benchmark_wall_s"] = time.perf_counter() - self._started
            summary.write_text(json.dumps(data, indent=2))


def sweeps(pending: list[tuple[str, int]]) -> list[tuple[list[str], list[int]]]:
    """The unfinished (arm, seed) runs as few arms × seeds products (one multirun each): all of them
    at first, a product per distinct set of unfinished seeds after a partial run."""
    by_arm: dict[str, tuple[int, ...]] = {}
    for arm, seed in pending:
        by_arm[arm] = by_arm.get(arm, ()) + (seed,)
    groups: dict[tuple[int, ...], list[str]] = {}
    for arm, seeds in by_arm.items():
        groups.setdefault(seeds, []).append(arm)
    return [(arms, list(seeds)) for seeds, arms in groups.items()]


def multirun_command(runs: Path, arms: list[str], seeds: list[int], reference: Path | None, launcher: str, jobs: int,
                     overrides: list[str]) -> list[str]:
    """``flowcg-al -m`` over arms × seeds, each run in runs/<arm>/seed<s> (reference None: the oracle's shipped one)."""
    per_launcher = {"joblib": [f"hydra.launcher.n_jobs={jobs}"],
                    "submitit_local": ["hydra.launcher.cpus_per_task=1"],
                    "submitit_slurm": [f"hydra.launcher.array_parallelism={jobs}", "hydra.launcher.cpus_per_task=1"]}
    return [
        str(BIN / "flowcg-al"), "-m", *COMMON, *([f"reference='{reference}'"] if reference else []),
        f"+al_arm={','.join(arms)}", f"seed={','.join(map(str, seeds))}",
        f"hydra.searchpath=['file://{HERE / 'conf'}']",
        f"hydra.sweep.dir='{runs}'", "hydra.sweep.subdir=${hydra:runtime.choices.al_arm}/seed${seed}",
        "+hydra.callbacks.benchmark_wall_time._target_=al_aldp.BenchmarkWallTime",
        *([] if launcher == "basic" else [f"hydra/launcher={launcher}", *per_launcher.get(launcher, [])]),
        *overrides,
    ]


def run_summary(runs: Path, arm: str, seed: int) -> Path:
    """The metrics.json a finished run of (arm, seed) leaves."""
    return runs / arm / f"seed{seed}" / "metrics.json"


def read_arm(runs: Path, arm: str, seed: int) -> dict:
    data = json.loads(run_summary(runs, arm, seed).read_text())
    final = data["rounds"][-1]
    return {"arm": arm, "seed": seed, "w1": final["w1"], "w1_tic0": final["w1_tic0"], "w1_tic1": final["w1_tic1"],
            "kl64": final["kl64"], "basins": {k[6:]: final[k] for k in final if k.startswith("basin_")},
            "reference_basins": {k[10:]: final[k] for k in final if k.startswith("ref_basin_")},
            "labels": final["n_labels"], "evaluations": data["initial_evaluations"] + data["prior_evaluations"] + final["oracle_evaluations"],
            "oracle_wall_s": data["initial_wall_s"] + data["prior_wall_s"] + final["oracle_wall_s"],
            "w1_per_round": [r["w1"] for r in data["rounds"]], "wall_s": data.get("benchmark_wall_s"),
            "held_out_force_mse": final.get("held_out_force_mse")}


def reevaluated(runs: Path, copies: Path, arm: str, seed: int, overrides: list[str]) -> dict:
    """:func:`read_arm` of a finished run with its evaluation replaced by that of its last round simulated again
    in ``copies/<arm>/seed<s>`` under ``overrides`` (the run's seed + 1000; al_final_md_noise.py). The last
    round's CG MD serves only the evaluation (its frames become no query), so this is the run under those
    evaluation settings, up to the final MD's seed."""
    from al_final_md_noise import repeat_final_round  # a sibling script: this folder leads sys.path

    row = read_arm(runs, arm, seed)
    if evaluated_under(runs / arm / f"seed{seed}", overrides):  # its own last round already ran so: no second simulation
        return row
    final = repeat_final_round(runs / arm / f"seed{seed}", copies / arm / f"seed{seed}", 1, False, tuple(overrides))
    row.update({key: final[key] for key in ("w1", "w1_tic0", "w1_tic1", "kl64")},
               basins={k[6:]: final[k] for k in final if k.startswith("basin_")}, frame_weight_ess=final.get("frame_weight_ess"),
               wall_s=None)
    return row


def evaluated_under(run: Path, overrides: list[str]) -> bool:
    """Whether the finished ``run``'s own config already holds every KEY=VALUE of ``overrides`` (values compared as
    YAML scalars, so 4 matches 4.0): e.g. a run made with today's ``COMMON``, which holds the biased evaluation."""
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    pairs = (override.split("=", 1) for override in overrides)
    return all(OmegaConf.select(config, key) == yaml.safe_load(value) for key, value in pairs)


def summarize(rows: list[dict]) -> dict:
    """Per arm (in the order of ARMS, those with rows): W1 mean, sample std and standard error over
    seeds, KL64, basins, costs."""
    arms = {}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in rows)]:
        mine = [r for r in rows if r["arm"] == arm]
        w1 = np.array([r["w1"] for r in mine])
        std = float(w1.std(ddof=1)) if len(w1) > 1 else float("nan")
        held_out = [r["held_out_force_mse"] for r in mine if r.get("held_out_force_mse") is not None]
        arms[arm] = {"w1_mean": float(w1.mean()), "w1_std": std, "w1_se": std / np.sqrt(len(w1)),
                     "held_out_force_mse_mean": float(np.mean(held_out)) if held_out else None,
                     "held_out_force_mse_se": float(np.std(held_out, ddof=1) / np.sqrt(len(held_out))) if len(held_out) > 1 else None,
                     "kl64_mean": float(np.mean([r["kl64"] for r in mine])),
                     "basins_mean": {b: float(np.mean([r["basins"][b] for r in mine])) for b in mine[0]["basins"]},
                     "labels": [r["labels"] for r in mine], "evaluations": [r["evaluations"] for r in mine],
                     "oracle_wall_s": [r["oracle_wall_s"] for r in mine], "wall_s": [r["wall_s"] for r in mine], "per_seed": mine}
    return arms


def comparisons(arms: dict) -> dict:
    """Each strategy arm against each baseline, and each of :data:`ORACLE_PAIRS`: relative W1 improvement on seed means, the difference of
    the means with its standard error, and whether it exceeds twice that error; and the same on the
    seeds both arms ran, paired. Arms of one seed share its network initialisations, its prior's flow
    draws and (flow arms) its initial draws, and their W1 move together (seed 1 is high in every arm),
    so the paired standard error, the spread of the per-seed differences over sqrt(n), is the honest
    one for a difference; the unpaired one treats that shared part as noise."""
    result = {}
    pairs = [(a, b) for a in STRATEGY_ARMS for b in BASELINES] + ORACLE_PAIRS
    for a, b in [(a, b) for a, b in pairs if a in arms and b in arms]:
        difference = arms[b]["w1_mean"] - arms[a]["w1_mean"]
        se = float(np.hypot(arms[a]["w1_se"], arms[b]["w1_se"]))
        w1_a = {r["seed"]: r["w1"] for r in arms[a]["per_seed"]}
        w1_b = {r["seed"]: r["w1"] for r in arms[b]["per_seed"]}
        paired = np.array([w1_b[seed] - w1_a[seed] for seed in sorted(set(w1_a) & set(w1_b))])
        paired_se = float(paired.std(ddof=1) / np.sqrt(len(paired))) if len(paired) > 1 else float("nan")
        result[f"{a}_vs_{b}"] = {"relative_improvement": 1.0 - arms[a]["w1_mean"] / arms[b]["w1_mean"],
                                 "w1_difference": difference, "se": se, "beyond_2_se": bool(difference > 2 * se),
                                 "paired_seeds": len(paired), "paired_difference": float(paired.mean()) if len(paired) else float("nan"),
                                 "paired_se": paired_se, "beyond_2_paired_se": bool(len(paired) > 1 and paired.mean() > 2 * paired_se)}
    return result


def versus(arms: dict, other: Path) -> dict:
    """Each arm against the same arm of another benchmark name (runs in ``other``), paired over the seeds both
    ran: W1 of the other minus this one's (positive = this variant lower), and both KL64 means."""
    result = {}
    for arm, a in arms.items():
        mine = {r["seed"]: r for r in a["per_seed"]}
        theirs = {seed: read_arm(other, arm, seed) for seed in mine if run_summary(other, arm, seed).is_file()}
        if not theirs:
            continue
        difference = np.array([theirs[seed]["w1"] - mine[seed]["w1"] for seed in sorted(theirs)])
        result[arm] = {"seeds": sorted(theirs), "paired_difference": float(difference.mean()),
                       "paired_se": float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("nan"),
                       "w1_other": float(np.mean([theirs[seed]["w1"] for seed in theirs])),
                       "w1_this": float(np.mean([mine[seed]["w1"] for seed in theirs])),
                       "kl64_other": float(np.mean([theirs[seed]["kl64"] for seed in theirs])),
                       "kl64_this": float(np.mean([mine[seed]["kl64"] for seed in theirs]))}
    return result


def _held_out_cell(arm: dict) -> str:
    """The arm's held-out force-matching loss (``loop.held_out_draws``), mean ± SE over seeds; – for runs made
    before the loop scored it (``al_force_error.py`` scores those)."""
    if arm["held_out_force_mse_mean"] is None:
        return "–"
    se = arm["held_out_force_mse_se"]
    return f"{arm['held_out_force_mse_mean']:.0f}" + (f" ± {se:.0f}" if se is not None else "")


def report(arms: dict, compared: dict) -> list[str]:
    reference_basins = next(iter(arms.values()))["per_seed"][0]["reference_basins"]
    basins = list(reference_basins)
    lines = ["| arm | W1 mean ± SE (std) | per seed | KL64 mean | " + " | ".join(basins)
             + " | held-out force loss (kJ/mol/nm)² | labels | energy evaluations | oracle s | run s |",
             "|---|---|---|---|" + "---|" * len(basins) + "---|---|---|---|---|",
             "| reference | – | – | – | " + " | ".join(f"{reference_basins[b]:.4f}" for b in basins) + " | – | – | – | – | – |"]
    for arm, a in arms.items():
        per_seed = ", ".join(f"{r['w1']:.4f}" for r in a["per_seed"])
        wall = [w for w in a["wall_s"] if w is not None]
        lines.append(f"| {arm} | {a['w1_mean']:.4f} ± {a['w1_se']:.4f} ({a['w1_std']:.4f}) | {per_seed} | {a['kl64_mean']:.2f} | "
                     + " | ".join(f"{a['basins_mean'][b]:.4f}" for b in basins) + f" | {_held_out_cell(a)}"
                     + f" | {min(a['labels'])}–{max(a['labels'])} | {min(a['evaluations'])}–{max(a['evaluations'])} | "
                     f"{np.mean(a['oracle_wall_s']):.0f} | {np.mean(wall) if wall else float('nan'):.0f} |")
    lines += ["", "| comparison | relative W1 improvement | W1 difference ± SE | beyond 2 SE | paired seeds: difference ± SE | beyond 2 paired SE |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k.replace('_vs_', ' vs ')} | {v['relative_improvement']:+.1%} | {v['w1_difference']:+.4f} ± {v['se']:.4f} | "
              f"{'yes' if v['beyond_2_se'] else 'no'} | {v['paired_seeds']}: {v['paired_difference']:+.4f} ± {v['paired_se']:.4f} | "
              f"{'yes' if v['beyond_2_paired_se'] else 'no'} |" for k, v in compared.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="CG reference npz (flowcg.active.evaluate); default: the one shipped with the oracle's model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS, help="a subset of the arms (run, and reported)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each): joblib's n_jobs, "
                        "Slurm's array parallelism; submitit_local starts all at once, basic one after another")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="joblib", help="Hydra launcher of the multirun (conf/hydra/launcher)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override of the multirun, e.g. hydra.launcher.partition=cpu (repeatable)")
    parser.add_argument("--name", default=NAME, help="runs in runs/NAME/<arm>/seed<s>, results in results/NAME.{json,md}: "
                        "a variant of the benchmark (e.g. with -o cg_model.dihedral_prior=learned) under its own name")
    parser.add_argument("--label", default=None, help="results in results/LABEL.{json,md} instead of results/NAME.*: "
                        "the report of a subset of arms or seeds beside the full one")
    parser.add_argument("--versus", default=None, metavar="NAME",
                        help="also compare each arm with the same arm and seeds of the benchmark NAME (runs/NAME), paired")
    parser.add_argument("--dry-run", action="store_true", help="print the multirun commands of the unfinished runs and stop")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: report the finished runs among --arms x --seeds (an arm may then have fewer seeds)")
    parser.add_argument("--reevaluate", nargs="+", default=None, metavar="KEY=VALUE",
                        help="train nothing: simulate the last round of the finished runs of --name again under these flowcg-al "
                             "overrides (e.g. simulation.final_bias_factor=4), in runs/LABEL/<arm>/seed<s>, and report that (needs --label)")
    args = parser.parse_args()
    if args.reevaluate and not args.label:
        parser.error("--reevaluate needs --label (the re-evaluated runs' folder and results)")
    for static_arm in ("static", "flow_draws"):
        if OmegaConf.load(ARM_CONFIGS / f"{static_arm}.yaml").initial.n_frames != BUDGET:
            sys.exit(f"{ARM_CONFIGS / f'{static_arm}.yaml'}: initial.n_frames must be the label budget {BUDGET}")
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    runs = HERE / "runs" / args.name
    pending = [(arm, seed) for arm, seed in jobs if not run_summary(runs, arm, seed).is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    reference = args.reference.resolve() if args.reference else None
    for arms, seeds in [] if args.report_only or args.reevaluate else sweeps(pending):
        command = multirun_command(runs, arms, seeds, reference, args.launcher, args.jobs, args.override)
        print(" ".join(command), flush=True)
        if not args.dry_run:
            runs.mkdir(parents=True, exist_ok=True)
            with open(runs / "multirun.log", "a") as log:
                subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    if args.dry_run:
        return
    # every run has finished unless --report-only skipped some (a failed multirun raised above)
    finished = [(arm, seed) for arm, seed in jobs if run_summary(runs, arm, seed).is_file()]
    if args.reevaluate:
        arms = summarize([reevaluated(runs, HERE / "runs" / args.label, arm, seed, args.reevaluate) for arm, seed in finished])
    else:
        arms = summarize([read_arm(runs, arm, seed) for arm, seed in finished])
    compared = comparisons(arms)
    result = {"budget_labels": BUDGET, "seeds": args.seeds, "reference": str(reference or "shipped with the oracle's model"),
              "common_overrides": COMMON, "overrides": args.override, "reevaluated_with": args.reevaluate, "arms": arms, "comparisons": compared, "device": f"{cpu_model()}, one thread per run"}
    label = args.label or args.name
    lines = report(arms, compared)
    if args.versus:
        against = versus(arms, HERE / "runs" / args.versus)
        result["versus"] = {"name": args.versus, "arms": against}
        lines += ["", f"| arm | seeds | W1 {args.versus} | W1 {args.name} | paired difference ± SE (positive: {args.name} lower) | "
                  f"KL64 {args.versus} | KL64 {args.name} |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {arm} | {len(v['seeds'])} | {v['w1_other']:.4f} | {v['w1_this']:.4f} | {v['paired_difference']:+.4f} ± {v['paired_se']:.4f} | "
                  f"{v['kl64_other']:.2f} | {v['kl64_this']:.2f} |" for arm, v in against.items()]
    save_json_atomic(result, HERE / "results" / f"{label}.json")
    write_atomic(HERE / "results" / f"{label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
