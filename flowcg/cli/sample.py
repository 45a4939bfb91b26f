"""``flowcg-sample``: draw N iid samples from a trained run and reweight them to the target.

    flowcg-sample run=RUN_DIR n=100000 hydra.run.dir=OUT

Writes into OUT: samples.npz (x, log_q, energies_kT, log_w, z_slow), metrics.json (Kish ESS,
log Z, reweighted observables, target metrics) and plots/*.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowcg.analysis.plots import plot_marginals, plot_samples
from flowcg.analysis.synthetic import target_metrics
from flowcg.builders import describe_device, load_run, seed_everything
from flowcg.cli.common import CONFIG_DIR, check_config_dir, clean_errors, write_json
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
    summary = samples.summary()
    metrics = {
        "run": str(Path(cfg.run).resolve()),
        "target": run.target.name,
        "beta": cfg.beta,
        **summary,
        "log_z_exact": run.target.log_z_exact if cfg.beta == 1.0 else None,
        "observables": {
            "mean_x_model": flat.mean(0).tolist(),
            "mean_x_reweighted": reweighted_mean(flat, samples.log_w).tolist(),
            "mean_energy_kT_reweighted": float(reweighted_mean(samples.energies_kT, samples.log_w)),
        },
        **(target_metrics(run.target, samples) if cfg.beta == 1.0 else {}),
        "energy_evaluations": run.target.n_energy_evaluations,
        "device": describe_device(run.device),
    }
    plot_marginals(run.target, samples, out_dir / "marginals.png")
    plot_samples(run.target, samples, out_dir / "samples.png")
    metrics["wall_time_s"] = time.perf_counter() - started
    write_json(metrics, out_dir / "metrics.json")
    print(f"flowcg-sample: {cfg.n} samples, ESS {summary['ess']:.4f}, log Z {summary['log_z']:.4f}; results in {out_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def _hydra_main(cfg: DictConfig) -> None:
    sample(cfg)


def main() -> None:
    check_config_dir()
    _hydra_main()


if __name__ == "__main__":
    main()
