"""``flowcg-reference``: resumable reference sampling of a molecular target.

``method=md`` (default) runs one OpenMM Langevin trajectory (:mod:`flowcg.md.openmm_run`);
``method=walkers`` runs many biased walkers at once and writes reweightable frames and the
compact Ramachandran reference (:mod:`flowcg.md.walkers`). Both write into ``hydra.run.dir`` and
resume when run again with the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowcg.builders import build_target
from flowcg.cli.common import clean_errors, entry_point
from flowcg.errors import ConfigError, build_from_options
from flowcg.md.openmm_run import ReferenceRun
from flowcg.md.walkers import BiasedWalkers, WalkerSettings
from flowcg.targets.molecular import MolecularTarget
from flowcg.targets.systems import load_system


def walkers(cfg: DictConfig) -> dict:
    """``method=walkers``: biased multiple-walker MD (flowcg.md.walkers)."""
    options = {key: value for key, value in cfg.walkers.items() if key not in ("production_ps", "compile")}
    settings = build_from_options(WalkerSettings, "walkers", {"seed": cfg.seed, "timestep_fs": cfg.timestep_fs, "friction_per_ps": cfg.friction_per_ps, **options})
    if cfg.walkers.production_ps <= 0:
        raise ConfigError(f"walkers.production_ps must be positive, got {cfg.walkers.production_ps}")
    target = build_target({"name": cfg.target.name, "options": {**cfg.target.options, "compile": cfg.walkers.compile}})
    if not isinstance(target, MolecularTarget):
        raise ConfigError(f"method=walkers needs a molecular target; '{cfg.target.name}' is not one")
    return BiasedWalkers(target, Path(HydraConfig.get().runtime.output_dir), settings).run(cfg.walkers.production_ps)


@clean_errors("flowcg-reference")
def reference(cfg: DictConfig) -> None:
    if cfg.method not in ("md", "walkers"):
        raise ConfigError(f"unknown method '{cfg.method}'; choose md or walkers")
    if cfg.method == "walkers":
        print(json.dumps(walkers(cfg), indent=2))
        return
    if cfg.ns <= 0:
        raise ConfigError(f"ns must be positive, got {cfg.ns}")
    system = load_system(cfg.target.name, temperature=cfg.target.options.temperature)
    run = ReferenceRun(
        system,
        Path(HydraConfig.get().runtime.output_dir),
        seed=cfg.seed,
        timestep_fs=cfg.timestep_fs,
        friction_per_ps=cfg.friction_per_ps,
        save_interval_fs=cfg.save_interval_fs,
        chunk_ps=cfg.chunk_ps,
        equilibration_ps=cfg.equilibration_ps,
        platform=cfg.platform,
        threads=cfg.threads,
    )
    metrics = run.run(cfg.ns)
    print(json.dumps(metrics, indent=2))


main = entry_point("reference", reference)


if __name__ == "__main__":
    main()
