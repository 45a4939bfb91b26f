"""``flowcg-al``: active learning of a CG potential with an all-atom oracle.

    flowcg-al experiment=al_aldp hydra.run.dir=DIR            # rerun the same line to resume
    flowcg-al experiment=al_aldp strategy=random seed=1
    flowcg-al experiment=al_aldp loop.rounds=0 initial.n_frames=600   # static baseline: one MD
    flowcg-al experiment=al_aldp loop.rounds=0 initial.source=reference initial.n_frames=1000   # "enough data" ceiling

Writes into DIR: ``initial_labels.npz`` (the initial data), ``prior_frames.npz`` (with
``cg_model.prior_draws`` > 0), ``journal.json``, ``round_XXX/``
(``models.pt``, ``simulation.npz``, ``metrics.json``, ``queries.npz``, ``labels.npz``),
``metrics.json`` (all rounds), ``w1_per_round.png`` and ``free_energy_round_XXX.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.evaluate import load_cg_reference, plot_round_ramachandran, plot_w1_per_round
from flowcg.active.flow_oracle import FlowOracle
from flowcg.active.labels import Labels
from flowcg.active.loop import ActiveLearningLoop, LoopOptions, ModelOptions, SimulationOptions
from flowcg.active.md_oracle import MDOracle
from flowcg.active.selection import build_strategy
from flowcg.analysis.w1 import fit_cg_tica
from flowcg.builders import build_target, load_run
from flowcg.cg.mapping import CGMapping
from flowcg.cg.training import FitOptions
from flowcg.cli.common import clean_errors, entry_point, write_json
from flowcg.coordinates.internal import InternalCoordinateTransform
from flowcg.errors import ConfigError, build_from_options
from flowcg.pretrained import load_pretrained, pretrained_dir

log = logging.getLogger("flowcg")

ORACLES = ("flow", "md")
INITIAL_SOURCES = ("md", "flow", "reference")


def build_mapping(topology, spec: str) -> CGMapping:
    if spec == "backbone":
        return CGMapping.aldp_backbone(topology)
    if spec == "heavy_atoms":
        return CGMapping.heavy_atoms(topology)
    return CGMapping(topology, spec)


def build_oracle(cfg_oracle, target, mapping, backmapper):
    """The oracle named in ``cfg_oracle`` (conf/oracle/*.yaml) and the flow model it uses, if any."""
    options = OmegaConf.to_container(cfg_oracle, resolve=True)
    name = options.pop("name")
    if name == "md":
        return build_from_options(MDOracle, "oracle", options, target, mapping, backmapper), None
    if name != "flow":
        raise ConfigError(f"unknown oracle '{name}'; choose one of {', '.join(ORACLES)}")
    if (options["run"] is None) == (options["pretrained"] is None):
        raise ConfigError("the flow oracle needs exactly one of oracle.run=RUN_DIR or oracle.pretrained=NAME")
    run = load_run(options["run"]) if options["run"] is not None else load_pretrained(options["pretrained"])
    if run.target.name != target.name:
        raise ConfigError(f"the flow oracle's model was trained on '{run.target.name}', the loop's target is '{target.name}'")
    return FlowOracle(run.model, run.target, mapping, backmapper, options["samples_per_query"], options["labels"]), options["pretrained"]


def _reference_path(cfg: DictConfig, pretrained: str | None) -> Path | None:
    if cfg.reference:
        return Path(cfg.reference)
    if pretrained is not None and (pretrained_dir(pretrained) / "reference_cg.npz").is_file():
        return pretrained_dir(pretrained) / "reference_cg.npz"
    return None


def initial_labels(cfg: DictConfig, target, mapping, backmapper, oracle, reference) -> Labels:
    """The data of round 0 (``initial.source``): ``md``, one unrestrained all-atom MD of
    ``initial.n_frames`` frames from the target's structure; ``flow``, ``initial.n_frames``
    one-shot draws of the flow oracle's model resampled by weight (data-free equilibrium frames,
    :meth:`FlowOracle.equilibrium`); or ``reference``, ``initial.n_frames`` equilibrium CG frames
    of the evaluation reference, each labelled by the oracle (the "enough data" ceiling: labels
    spread as the Boltzmann ensemble is, which no strategy can beat)."""
    source = cfg.initial.source
    if source == "md":
        md = MDOracle(target, mapping, backmapper, restraint_kJ_mol_rad2=0.0, n_frames=cfg.initial.n_frames,
                      frame_interval_steps=cfg.initial.frame_interval_steps, equilibration_steps=cfg.initial.equilibration_steps,
                      minimize_iterations=cfg.initial.minimize_iterations)
        labels = md.label(mapping.map_positions(target.positions[None]), seed=cfg.seed)
    elif source == "flow":
        if not isinstance(oracle, FlowOracle):
            raise ConfigError("initial.source=flow needs the flow oracle (oracle=flow)")
        labels = oracle.equilibrium(cfg.initial.n_frames, seed=cfg.seed)
    elif source == "reference":
        if reference is None:
            raise ConfigError("initial.source=reference needs an evaluation reference (reference=PATH)")
        n_frames = len(reference.frames_nm)
        if cfg.initial.n_frames > n_frames:
            raise ConfigError(f"initial.n_frames={cfg.initial.n_frames} exceeds the reference's {n_frames} frames")
        chosen = np.random.default_rng(cfg.seed).choice(n_frames, size=cfg.initial.n_frames, replace=False)
        labels = oracle.label(reference.frames_nm[np.sort(chosen)], seed=cfg.seed)
    else:
        raise ConfigError(f"unknown initial.source '{source}'; choose one of {', '.join(INITIAL_SOURCES)}")
    log.info("initial data (%s): %d labels, %d evaluations, %.1f s", source, len(labels), labels.n_energy_evaluations, labels.wall_s)
    return labels


def build_loop(cfg: DictConfig, run_dir: Path) -> tuple[ActiveLearningLoop, Labels, Path | None]:
    """The loop of a flowcg-al config in ``run_dir`` (its initial data made, or read back when
    ``run_dir`` holds them), the initial labels and the evaluation reference's path."""
    target = build_target(cfg.target)
    mapping = build_mapping(target.topology, cfg.mapping)
    backmapper = TorsionBackmapper(InternalCoordinateTransform.from_topology(target.topology), target.positions, mapping)
    oracle, pretrained = build_oracle(cfg.oracle, target, mapping, backmapper)
    strategy = build_strategy(**OmegaConf.to_container(cfg.strategy, resolve=True))
    # the options are checked before any energy is evaluated: a bad one is an error now, not after the initial data
    model_options = build_from_options(ModelOptions, "cg_model", OmegaConf.to_container(cfg.cg_model, resolve=True))
    simulation = build_from_options(SimulationOptions, "simulation", OmegaConf.to_container(cfg.simulation, resolve=True))

    reference_path = _reference_path(cfg, pretrained)
    reference = load_cg_reference(reference_path, mapping, backmapper, cfg.reference_lag_frames) if reference_path else None
    if reference is None:
        log.warning("no reference given: rounds are evaluated without W1 / Ramachandran KL")
    initial_path = run_dir / "initial_labels.npz"
    initial = Labels.load(initial_path) if initial_path.is_file() else initial_labels(cfg, target, mapping, backmapper, oracle, reference)
    fit = FitOptions(steps=cfg.fit.steps, batch_size=cfg.fit.batch_size, lr=cfg.fit.lr, final_lr_factor=cfg.fit.final_lr_factor,
                     energy_weight=cfg.fit.energy_weight)
    initial_tica = fit_cg_tica(initial.cg_positions_nm, cfg.fit.tica_lag_frames) if fit.energy_weight > 0 else None

    loop = ActiveLearningLoop(
        run_dir, mapping, backmapper, oracle, strategy, initial,
        LoopOptions(rounds=cfg.loop.rounds, queries_per_round=cfg.loop.queries_per_round, committee_size=cfg.loop.committee_size,
                    fit=fit, finetune_steps=cfg.loop.finetune_steps, max_candidates=cfg.loop.max_candidates,
                    temperature_K=target.temperature, seed=cfg.seed, query_weight=cfg.loop.query_weight,
                    candidates=cfg.loop.candidates, held_out_draws=cfg.loop.held_out_draws),
        model_options, simulation, reference=reference, initial_tica=initial_tica,
    )
    return loop, initial, reference_path


@clean_errors("flowcg-al")
def active_learning(cfg: DictConfig) -> list[dict]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    loop, initial, reference_path = build_loop(cfg, run_dir)
    metrics = loop.run()
    summary = {"rounds": metrics, "initial_frames": len(initial), "initial_evaluations": initial.n_energy_evaluations,
               "initial_wall_s": initial.wall_s, **loop.prior_cost, "oracle": cfg.oracle.name, "strategy": cfg.strategy.name,
               "reference": str(reference_path) if reference_path else None, "reference_lag_frames": cfg.reference_lag_frames}
    write_json(summary, run_dir / "metrics.json")
    plot_w1_per_round(metrics, run_dir / "w1_per_round.png")
    for r in range(cfg.loop.rounds + 1):
        plot_round_ramachandran(loop.simulated_frames(r), loop.backmapper, run_dir / f"free_energy_round_{r:03d}.png", loop.reference)
    log.info("done: %s", {k: metrics[-1].get(k) for k in ("w1", "kl64", "n_labels")})
    return metrics


main = entry_point("al", active_learning)


if __name__ == "__main__":
    main()
