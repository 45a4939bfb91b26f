"""How much of an AL arm's seed-to-seed W1 spread is the noise of its final CG MD, and how much its training's.

    .venv/bin/python data_free_benchmarks/al_final_md_noise.py RUN [RUN ...] [--repeats 3] [--retrain] [--label al_final_md_noise]
        [-o simulation.final_bias_factor=4 ...]

Each RUN is a finished ``flowcg-al`` folder (e.g. ``data_free_benchmarks/runs/al_aldp/flow_draws/seed0``).
It is copied to ``runs/<label>/<arm>_<seed>/rep<k>``, and the copy's last round is
simulated again with the run's seed + 1000 k and evaluated against the same reference: the same
models, start rule and length, only the Langevin noise and the start frames differ. The spread
of W1 over the repeats of one run is the evaluation's noise. The spread over an arm's seeds
(``al_aldp.py``) is that plus the model's own spread (its data and training). With ``--retrain``
(runs without rounds only, whose data are fixed before any training) the copy's models are trained
afresh too, on the same labels and prior: the spread is then the evaluation's plus the network
initialisation's and minibatches'. ``-o KEY=VALUE`` changes the repeats' settings (e.g. a biased,
reweighted final MD, ``simulation.final_bias_factor``): the repeats then measure that evaluation, its
W1 and its αL share, against the run's own. Rerunning skips finished repeats. Results:
``results/<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from flowcg.builders import cpu_model
from flowcg.cli.al import build_loop
from flowcg.cli.common import CONFIG_PACKAGE
from flowcg.io import load_json, save_json_atomic, write_atomic

HERE = Path(__file__).resolve().parent
#: seed offset of repeat k: k × this, far from the benchmark's seeds 0–9
REPEAT_SEED_STRIDE = 1000


def run_config(run: Path, seed_offset: int = 0, extra: tuple[str, ...] = ()):
    """The flowcg-al config of a finished ``run``, its overrides composed afresh (so that a run made before a
    setting existed gets its default), with the seed moved by ``seed_offset`` and ``extra`` overrides last."""
    overrides = [o for o in OmegaConf.load(run / ".hydra" / "overrides.yaml") if not o.startswith("seed=")]
    seed = int(OmegaConf.load(run / ".hydra" / "config.yaml").seed) + seed_offset
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        return compose("al", overrides=[*overrides, f"seed={seed}", *extra, f"hydra.searchpath=['file://{HERE / 'conf'}']"])


def repeat_final_round(run: Path, copy: Path, k: int, retrain: bool, extra: tuple[str, ...] = ()) -> dict:
    """The last round's metrics of ``run`` simulated and evaluated again in ``copy`` with seed + 1000 k
    (``retrain``: its model trained again too, on the same labels; ``extra``: overrides of the repeat)."""
    done = copy / "repeat.json"
    if done.is_file():
        return load_json(done)
    cfg = run_config(run, seed_offset=REPEAT_SEED_STRIDE * k, extra=extra)
    shutil.copytree(run, copy, dirs_exist_ok=True)
    if retrain:
        if cfg.loop.rounds != 0:
            raise SystemExit(f"{run}: --retrain needs a run without rounds (its queries would change with the seed)")
        (copy / "journal.json").unlink()
    loop, _, _ = build_loop(cfg, copy)  # initial labels and prior frames are read back from the copy
    metrics = loop.run()[-1] if retrain else loop.simulate_and_evaluate(loop.options.rounds)
    save_json_atomic(metrics, done)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished flowcg-al run folders")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retrain", action="store_true", help="train the models again too (runs without rounds only)")
    parser.add_argument("--label", default="al_final_md_noise")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a flowcg-al override of the repeats (not of the run's own row)")
    args = parser.parse_args()
    extra = tuple(args.override)
    rows = []
    for run in args.runs:
        name = f"{run.parent.name}_{run.name}"
        own = load_json(run / "metrics.json")["rounds"][-1]
        repeats = [repeat_final_round(run, HERE / "runs" / args.label / name / f"rep{k}", k, args.retrain, extra)
                   for k in range(1, args.repeats + 1)]
        w1 = np.array([m["w1"] for m in repeats])
        rows.append({"run": str(run), "name": name, "own_w1": own["w1"], "own_alpha_L": own.get("basin_alpha_L"),
                     "w1": w1.tolist(), "alpha_L": [m.get("basin_alpha_L") for m in repeats],
                     "frame_weight_ess": [m.get("frame_weight_ess") for m in repeats],
                     "mean": float(w1.mean()), "std": float(w1.std(ddof=1)) if len(w1) > 1 else None})
        print(f"{name}: own W1 {own['w1']:.4f}, repeats {', '.join(f'{v:.4f}' for v in w1)}", flush=True)
    spread = [r["std"] for r in rows if r["std"] is not None]
    pooled = float(np.sqrt(np.mean(np.square(spread)))) if spread else None
    result = {"rows": rows, "pooled_within_run_std": pooled, "repeats": args.repeats, "retrain": args.retrain,
              "overrides": list(extra), "device": f"{cpu_model()}, default threads"}
    save_json_atomic(result, HERE / "results" / f"{args.label}.json")

    def listed(values, digits=4):
        return ", ".join("–" if v is None else f"{v:.{digits}f}" for v in values)

    settings = " ".join(extra) or "the run's own settings"
    lines = [f"repeats: {settings}", "",
             "| run | W1 own | W1 repeats | std of repeats | αL own | αL repeats | frame-weight ESS |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['own_w1']:.4f} | {listed(r['w1'])} | {listed([r['std']])} | {listed([r['own_alpha_L']])} | "
              f"{listed(r['alpha_L'])} | {listed(r['frame_weight_ess'], 2)} |" for r in rows]
    lines.append(f"| pooled std of repeats | | | {listed([pooled])} | | | |")
    write_atomic(HERE / "results" / f"{args.label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
