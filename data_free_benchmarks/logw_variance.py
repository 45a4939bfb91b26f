"""Where the variance of log w of a molecular model sits: slow cells or single coordinates?

    .venv/bin/python data_free_benchmarks/logw_variance.py [--name aldp_implicit] [--n 200000]
    .venv/bin/python data_free_benchmarks/logw_variance.py --run runs/ala4_s32 --label ala4_s32

Draws ``--n`` one-shot samples of ``flowcg/pretrained/<name>`` or of a ``flowcg-train`` run folder
(seed 0), maps them to the model's internal coordinates and reports the share of Var(log w) that
each grouping explains: the between-cell share over the cells of the slow latents (8 per latent
for two of them; with more, as many per latent as keep the cells at most 64, e.g. the sign of each
of a tetrapeptide's six torsions), and for every internal coordinate the
correlation ratio η² of log w on 20 quantile bins of that coordinate alone (the share its 1-D
marginal error can carry). If the shares are small, the weight spread is in the joint
(correlated) fit of many coordinates, which no refit of a marginal or of the slow prior can
remove.

With ``--slow-states K`` (default 8) also the split by conditional draws: K slow states s drawn from
the model, ``--per-state`` draws of x ~ q(x | s) at each, and for each state Var(log w | s) and
E[log w | s]. Var(log w) = E[Var(log w | s)] + Var(E[log w | s]): a spread of E[log w | s] much
larger than the conditional variances says the slow prior carries the error (a refit's job), the
reverse says the conditional flow does (training's). Results: ``results/<name or label>_logw_variance.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from flowcg import load_target
from flowcg.builders import cpu_model, load_run
from flowcg.pretrained import load_pretrained
from flowcg.sampling import draw_samples, kish_ess

RESULTS = Path(__file__).resolve().parent / "results"
MAX_SLOW_CELLS = 64  # 8 x 8 on a 2-torus; few enough that every cell holds thousands of draws
COORDINATE_BINS = 20


def between_share(log_w: np.ndarray, groups: np.ndarray) -> float:
    """Share of Var(log w) explained by the group means (the correlation ratio η²)."""
    counts = np.bincount(groups)
    means = np.bincount(groups, weights=log_w) / np.maximum(counts, 1)
    return float(((means[groups] - log_w.mean()) ** 2).mean() / log_w.var())


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.quantile(values, np.linspace(0, 1, bins + 1))
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)


def conditional_split(model, target, slow_states: np.ndarray, per_state: int) -> list[dict]:
    """Var and mean of log w over ``per_state`` draws of q(x | s) at each of ``slow_states`` (K, slow_dim)."""
    rows = []
    for state in slow_states:
        repeated = torch.as_tensor(np.repeat(state[None], per_state, 0), dtype=torch.float32)
        draws = draw_samples(model, target, per_state, batch_size=per_state, slow=repeated)
        log_w = draws.log_w[np.isfinite(draws.log_w)]
        rows.append({"z_slow_rad": state.tolist(), "var_log_w": float(log_w.var()), "mean_log_w": float(log_w.mean()),
                     "ess": kish_ess(draws.log_w), "n_finite": int(log_w.size)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="aldp_implicit", help="a shipped molecular model")
    parser.add_argument("--run", type=Path, default=None, help="a flowcg-train run folder instead of a shipped model")
    parser.add_argument("--label", default=None, help="name of the result file (default: --name, or the --run folder's name)")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--slow-states", type=int, default=8, help="slow states for the conditional split (0: none)")
    parser.add_argument("--per-state", type=int, default=4000, help="conditional draws at each slow state")
    args = parser.parse_args()
    label = args.label or (args.run.name if args.run else args.name)  # a run never writes over a shipped model's file
    torch.manual_seed(0)
    run = load_run(args.run) if args.run else load_pretrained(args.name)
    target = load_target(run.config.target.name, compile=True)
    samples = draw_samples(run.model, target, args.n)
    finite = np.isfinite(samples.log_w)
    log_w = samples.log_w[finite]
    coordinates = run.model.coordinates
    with torch.no_grad():
        ic = coordinates.inverse(torch.as_tensor(samples.x[finite], dtype=torch.float32))[0].double().numpy()
    slow_dim = samples.z_slow.shape[1]
    per_latent = max(2, int(MAX_SLOW_CELLS ** (1 / slow_dim) + 1e-9))
    cells = np.clip(np.floor((samples.z_slow[finite] + np.pi) / (2 * np.pi) * per_latent).astype(int), 0, per_latent - 1)
    slow_groups = np.ravel_multi_index(tuple(cells.T), (per_latent,) * slow_dim)
    per_coordinate = sorted(
        ({"eta2": between_share(log_w, quantile_bins(ic[:, j], COORDINATE_BINS)), "index": j, "kind": coordinates.kind[j],
          "atoms": [int(a) for a in coordinates.atom_indices[j]]} for j in range(ic.shape[1])),
        key=lambda row: -row["eta2"])
    record = {
        "command": "python data_free_benchmarks/logw_variance.py "
                   + (f"--run {args.run} --label {label}" if args.run else f"--name {args.name}")
                   + f" --n {args.n} --slow-states {args.slow_states} --per-state {args.per_state}",
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "n_finite": int(finite.sum()),
        "ess": kish_ess(samples.log_w), "var_log_w": float(log_w.var()),
        "slow_cells": f"{per_latent}^{slow_dim}", "slow_cells_share": between_share(log_w, slow_groups),
        "coordinate_share_sum_by_kind": {kind: sum(r["eta2"] for r in per_coordinate if r["kind"] == kind) for kind in dict.fromkeys(coordinates.kind)},
        "largest_coordinate_shares": per_coordinate[:10],
        "conditional": conditional_split(run.model, target, samples.z_slow[finite][: args.slow_states], args.per_state),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{label}_logw_variance.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("largest_coordinate_shares", "conditional")}, indent=1))
    for row in record["conditional"]:
        print(f"s = {np.round(np.degrees(row['z_slow_rad'])).astype(int).tolist()} deg: Var(log w | s) {row['var_log_w']:.2f}, "
              f"E[log w | s] {row['mean_log_w']:.2f}, conditional ESS {row['ess']:.3f}")
    for row in per_coordinate[:5]:
        print(row)


if __name__ == "__main__":
    main()
