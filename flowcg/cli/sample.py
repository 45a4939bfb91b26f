"""``flowcg-sample``: draw N iid samples from a trained run and reweight them to the target.

    flowcg-sample run=RUN_DIR n=100000 hydra.run.dir=OUT

Writes into OUT: samples.npz (x, log_q, energies_kT, log_w, z_slow), metrics.json (Kish ESS,
log Z, reweighted observables, target metrics) and plots/*.png.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowcg.analysis.plots import plot_marginals, plot_samples
from flowcg.analysis.evaluate import evaluate_samples
from flowcg.builders import describe_device, load_run, seed_everything
from flowcg.cli.common import clean_errors, entry_point, write_json
from flowcg.sampling import draw_samples, reweighted_mean


@clean_errors("flowcg-sample")
def sample(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    seed_everything(cfg.seed)
    run = load_run(cfg.run, device=cfg.device)
    samples = draw_samples(run.model, run.target, cfg.n, cfg.batch_size, beta=cfg.beta)
    samples.save(out_dir / "samples.npz")
    flat = samples.x.reshape(len(samples.x), -1)
    metrics = {
        "run": str(Path(cfg.run).resolve()),
        "target": run.target.name,
        "beta": cfg.beta,
        **evaluate_samples(run.target, samples),
        "observables": {
            "mean_x_model": flat.mean(0).tolist(),
            "mean_x_reweighted": reweighted_mean(flat, samples.log_w).tolist(),
            "mean_energy_kT_reweighted": float(reweighted_mean(samples.energies_kT, samples.log_w)),
        },
        "energy_evaluations": run.target.n_energy_evaluations,
        "device": describe_device(run.device),
    }
    plot_marginals(run.target, samples, out_dir / "marginals.png")
    plot_samples(run.target, samples, out_dir / "samples.png")
    metrics["wall_time_s"] = time.perf_counter() - started
    write_json(metrics, out_dir / "metrics.json")
    print(f"flowcg-sample: {cfg.n} samples, ESS {metrics['ess']:.4f}, log Z {metrics['log_z']:.4f}; results in {out_dir}")
    return metrics


main = entry_point("sample", sample)

if __name__ == "__main__":
    main()
