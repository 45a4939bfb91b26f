"""How much of an AL arm's seed-to-seed W1 spread is the noise of its final CG MD, and how much its training's.

    .venv/bin/python data_free_benchmarks/al_final_md_noise.py RUN [RUN ...] [--repeats 3] [--retrain] [--label al_final_md_noise]

Each RUN is a finished ``flowcg-al`` folder (e.g. ``data_free_benchmarks/runs/al_aldp/flow_draws/seed0``).
It is copied to ``runs/<label>/<arm>_<seed>/rep<k>``, and the copy's last round is
simulated again with the run's seed + 1000 k and evaluated against the same reference: the same
models, start rule and length, only the Langevin noise and the start frames differ. The spread
of W1 over the repeats of one run is the evaluation's noise. The spread over an arm's seeds
(``al_aldp.py``) is that plus the model's own spread (its data and training). With ``--retrain``
(runs without rounds only, whose data are fixed before any training) the copy's models are trained
afresh too, on the same labels and prior: the spread is then the evaluation's plus the network
initialisation's and minibatches'. Rerunning skips finished repeats. Results:
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


def run_config(run: Path, seed_offset: int = 0):
    """The flowcg-al config of a finished ``run``, its overrides composed afresh (so that a run made before a
    setting existed gets its default), with the seed moved by ``seed_offset``."""
    overrides = [o for o in OmegaConf.load(run / ".hydra" / "overrides.yaml") if not o.startswith("seed=")]
    seed = int(OmegaConf.load(run / ".hydra" / "config.yaml").seed) + seed_offset
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        return compose("al", overrides=[*overrides, f"seed={seed}", f"hydra.searchpath=['file://{HERE / 'conf'}']"])


def repeat_final_round(run: Path, copy: Path, k: int, retrain: bool) -> dict:
    """The last round's metrics of ``run`` simulated and evaluated again in ``copy`` with seed + 1000 k
    (``retrain``: its model trained again too, on the same labels)."""
    done = copy / "repeat.json"
    if done.is_file():
        return load_json(done)
    cfg = run_config(run, seed_offset=REPEAT_SEED_STRIDE * k)
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
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        name = f"{run.parent.name}_{run.name}"
        original = load_json(run / "metrics.json")["rounds"][-1]["w1"]
        repeats = [repeat_final_round(run, HERE / "runs" / args.label / name / f"rep{k}", k, args.retrain)["w1"] for k in range(1, args.repeats + 1)]
        w1 = np.array([original, *repeats])
        rows.append({"run": str(run), "name": name, "w1": w1.tolist(), "mean": float(w1.mean()), "std": float(w1.std(ddof=1))})
        print(f"{name}: W1 {', '.join(f'{v:.4f}' for v in w1)} (std {rows[-1]['std']:.4f})", flush=True)
    pooled = float(np.sqrt(np.mean([r["std"] ** 2 for r in rows])))
    result = {"rows": rows, "pooled_within_run_std": pooled, "repeats": args.repeats, "retrain": args.retrain,
              "device": f"{cpu_model()}, default threads"}
    save_json_atomic(result, HERE / "results" / f"{args.label}.json")
    lines = ["| run | W1: the run's own, then the repeats | std |", "|---|---|---|"]
    lines += [f"| {r['name']} | {', '.join(f'{v:.4f}' for v in r['w1'])} | {r['std']:.4f} |" for r in rows]
    lines.append(f"| pooled within-run std | | {pooled:.4f} |")
    write_atomic(HERE / "results" / f"{args.label}.md", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
