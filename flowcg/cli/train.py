"""``flowcg-train``: train a structured-latent flow on a target, then sample and evaluate it.

    flowcg-train experiment=double_well hydra.run.dir=DIR [resume=true] [key=value ...]
    flowcg-train experiment=aldp_implicit init_from=RUN train/schedule=constant ...   # continue a finished run
    flowcg-train ... init_from=RUN train.final_steps=0 prior_refit.n_components=24    # refit its slow prior only

Writes into the run folder: config.yaml, checkpoint.pt, model.pt, training.json, samples.npz,
metrics.json and plots/*.png; with ``model.slow_coordinates=auto`` also slow_discovery.json (the
torsion scans and the choice; config.yaml then names the chosen indices).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flowcg.analysis.evaluate import evaluate_samples
from flowcg.analysis.molecular import resolve_reference
from flowcg.analysis.plots import plot_run
from flowcg.builders import (CONFIG_NAME, MODEL_NAME, build_model, build_run_target, configure_compile, describe_device, resolve_dtype,
                             resolve_slow_coordinates, save_model, seed_everything)
from flowcg.cli.common import clean_errors, entry_point, log, write_json
from flowcg.errors import ConfigError
from flowcg.io import load_torch
from flowcg.logger import build_logger
from flowcg.sampling import draw_samples
from flowcg.training.recipe import build_phases, run_recipe
from flowcg.training.trainer import CHECKPOINT_NAME, resolve_conditioner_dtype

DISCOVERY_NAME = "slow_discovery.json"


def _warm_start(model, init_from, load_weights: bool) -> int:
    """Load the weights of the finished run ``init_from`` (same model config) into ``model``
    (unless resuming, when the checkpoint has them); returns that run's total energy evaluations
    (0 without ``init_from``)."""
    if not init_from:
        return 0
    folder = Path(init_from)
    weights = load_torch(folder / MODEL_NAME, what="model file")["model"]
    model.match_slow_prior(weights)  # also when resuming: the run's config.yaml records this size
    if load_weights:
        model.load_state_dict(weights)
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    inherited = int(metrics.get("energy_evaluations_total", metrics.get("energy_evaluations", 0)))
    log.info("warm start from %s (%d energy evaluations inherited)", folder, inherited)
    return inherited


@clean_errors("flowcg-train")
def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    seed_everything(cfg.seed)
    target, device = build_run_target(cfg)
    discovery = resolve_slow_coordinates(cfg.model, target)  # config.yaml then names the torsions found
    model = build_model(cfg.model, target).to(device=device, dtype=resolve_dtype(cfg.dtype))
    configure_compile(model, cfg.compile, cfg.model.kind)
    cfg.train.conditioner_dtype = resolve_conditioner_dtype(cfg.train.conditioner_dtype, model)  # config.yaml names the precision used
    log.info("train.conditioner_dtype: %s", cfg.train.conditioner_dtype or "the model's dtype")
    phases = build_phases(OmegaConf.to_container(cfg.recipe.phases, resolve=True),
                          OmegaConf.to_container(cfg.train, resolve=True), OmegaConf.to_container(cfg.prior_refit, resolve=True))
    if cfg.n_samples < 1:
        raise ConfigError(f"n_samples must be ≥ 1, got {cfg.n_samples}")
    has_checkpoint = (run_dir / CHECKPOINT_NAME).is_file()
    if has_checkpoint and not cfg.resume:
        raise ConfigError(f"{run_dir} already holds a checkpoint; pass resume=true to continue it, or choose a new hydra.run.dir")
    inherited_evaluations = _warm_start(model, cfg.init_from, load_weights=not has_checkpoint)
    if cfg.init_from:  # a refit may have resized the warm start's slow mixture; config.yaml must rebuild these weights
        cfg.model.n_components = model.latent.slow.n_components
    OmegaConf.save(cfg, run_dir / CONFIG_NAME)
    if discovery is not None:
        write_json(discovery.to_dict(), run_dir / DISCOVERY_NAME)

    logger = build_logger(cfg.logger.kind, run_dir, OmegaConf.to_container(cfg, resolve=True), **OmegaConf.to_container(cfg.logger.options, resolve=True))
    setup_s = time.perf_counter() - started
    try:
        result = run_recipe(model, target, phases, run_dir, cfg.seed, logger, resume=bool(cfg.resume))
        trained_at = time.perf_counter()
        final, history = result.train_states[-1], result.history()
        save_model(model, run_dir)
        write_json(history, run_dir / "training.json")
        training_evaluations = target.n_energy_evaluations

        samples = draw_samples(model, target, cfg.n_samples, cfg.sample_batch_size)
        samples.save(run_dir / "samples.npz")
        reference = resolve_reference(cfg.reference, target)
        metrics = {
            "target": target.name,
            **evaluate_samples(target, samples, reference),
            "energy_evaluations": training_evaluations,
            "energy_evaluations_sampling": target.n_energy_evaluations - training_evaluations,
            # a warm-started run's cost includes the training of the run it started from
            "energy_evaluations_total": training_evaluations + inherited_evaluations,
            "train_wall_time_s": result.train_wall_time_s,
            **({"prior_refit": result.refits, "prior_refit_wall_time_s": result.refit_wall_time_s} if result.refits else {}),
            "phases": [p["kind"] for p in result.phases],
            "stages": len(history["stages"]),
            "steps": result.total("step"),
            "final_beta": final["beta"],
            "skipped_steps": result.total("skipped_steps"),
            "nonfinite_energies_training": result.total("nonfinite_energies"),
            **({"slow_discovery": {"selected": discovery.selected, "wall_time_s": discovery.wall_time_s,
                                   "minimisations": discovery.minimisations}} if discovery is not None else {}),
            "seed": cfg.seed,
            "dtype": cfg.dtype,
            "conditioner_dtype": cfg.train.conditioner_dtype,
            "device": describe_device(device),
        }
        plot_run(target, {**final, **history}, samples, run_dir / "plots", reference)
        # training time accumulates across resumes; setup and evaluation are this process's
        metrics["wall_time_s"] = setup_s + result.train_wall_time_s + result.refit_wall_time_s + (time.perf_counter() - trained_at)
        write_json(metrics, run_dir / "metrics.json")
        logger.summary(metrics)
    finally:
        logger.finish()
    log.info("ESS %.4f, log Z %.4f (exact %s), %d energy evaluations", metrics["ess"], metrics["log_z"], metrics.get("log_z_exact"), metrics["energy_evaluations"])
    print(f"flowcg-train: results in {run_dir}")
    return metrics


main = entry_point("train", train)

if __name__ == "__main__":
    main()
