"""A training recipe: phases declared in the config, run in order in one run folder, one resumable chain.

A model that took several warm-started runs (train, continue at β = 1, refit the slow prior,
train conditionally, refit again, …) is one ``flowcg-train`` command once its phases are written
down as ``recipe.phases`` (the config group ``conf/recipe``: ``plain``, ``aldp``, ``anneal``, ``peptide``)::

    phases:
      - {kind: train}                                              # the run's train settings
      - {kind: train, schedule: {kind: constant}, final_steps: 2500, batch_size: 1024, lr: 2.0e-4}
      - {kind: refit, n_components: 24, rounds: 2}

Phase kinds:

* ``train``: tempered reverse KL (:class:`~flowcg.training.trainer.Trainer`, a fresh Adam) with
  the run's ``train`` settings, the phase's keys replacing theirs (``schedule`` replaced whole);
* ``refit``: the importance-weighted refit of the slow prior
  (:func:`~flowcg.training.prior_refit.refit_slow_prior`) with the run's ``prior_refit``
  settings, the phase's keys replacing theirs.

An empty recipe means one ``train`` phase, then a ``refit`` if ``prior_refit.n_components > 0``:
the plain run. Phase 0 trains in the run folder (its ``checkpoint.pt``), phase i in ``phase{i}/``.
After every phase ``recipe.pt`` (atomic) holds the model, the RNG states and the energy-evaluation
count, so a run killed anywhere and resumed with ``resume=true`` repeats no finished phase, resumes
the current one from its checkpoint, and ends with exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from flowcg.errors import ConfigError, build_from_options
from flowcg.flows.model import StructuredFlow
from flowcg.targets.base import Target
from flowcg.io import load_torch, save_atomic
from flowcg.training.prior_refit import PriorRefitConfig, refit_slow_prior
from flowcg.training.schedules import Schedule, build_schedule
from flowcg.training.trainer import CHECKPOINT_NAME, MetricLogger, TrainConfig, Trainer, rng_state, set_rng_state

log = logging.getLogger(__name__)

PHASE_KINDS = ("train", "refit")
STATE_NAME = "recipe.pt"


@dataclass
class Phase:
    """One phase: its kind and its complete settings (the run's, with the phase's keys applied)."""

    kind: str
    settings: dict


def build_training(settings: dict) -> tuple[Schedule, TrainConfig]:
    """Tempering schedule and optimisation settings from ``train`` settings (``schedule`` holds the schedule's)."""
    options = dict(settings)
    schedule = dict(options.pop("schedule"))
    return build_schedule(schedule.pop("kind"), **schedule), build_from_options(TrainConfig, "train", options)


def build_phases(recipe: list[dict] | None, train: dict, prior_refit: dict) -> list[Phase]:
    """The phases of a recipe, each validated now (a typo fails before any training)."""
    if not recipe:
        recipe = [{"kind": "train"}] + ([{"kind": "refit"}] if prior_refit.get("n_components", 0) > 0 else [])
    phases = []
    for index, entry in enumerate(recipe):
        entry = dict(entry)
        kind = entry.pop("kind", None)
        if kind not in PHASE_KINDS:
            raise ConfigError(f"recipe phase {index}: kind must be one of {', '.join(PHASE_KINDS)}, got {kind!r}")
        settings = {**(train if kind == "train" else prior_refit), **entry}  # a phase's schedule replaces the run's whole
        try:
            if kind == "train":
                build_training(settings)
            elif not build_from_options(PriorRefitConfig, "prior_refit", settings).enabled:
                raise ConfigError("a refit needs n_components > 0")
        except ConfigError as error:
            raise ConfigError(f"recipe phase {index}: {error}") from None
        phases.append(Phase(kind, settings))
    if phases[0].kind != "train":
        raise ConfigError("a recipe starts with a train phase")
    return phases


@dataclass
class RecipeResult:
    """What the phases did: one record per phase and the totals over the train phases."""

    phases: list[dict] = field(default_factory=list)

    @property
    def train_states(self) -> list[dict]:
        return [p["state"] for p in self.phases if p["kind"] == "train"]

    @property
    def refits(self) -> list[dict]:
        return [record for p in self.phases if p["kind"] == "refit" for record in p["records"]]

    def total(self, key: str):
        return sum(state[key] for state in self.train_states)

    @property
    def train_wall_time_s(self) -> float:
        return self.total("wall_time_s")

    @property
    def refit_wall_time_s(self) -> float:
        return sum(p["wall_time_s"] for p in self.phases if p["kind"] == "refit")

    def history(self) -> dict:
        """Stages and loss curve of all train phases, steps counted through the recipe."""
        stages, curve, offset = [], [], 0
        for index, p in enumerate(self.phases):
            if p["kind"] != "train":
                continue
            stages += [{**stage, "phase": index, "step": stage["step"] + offset} for stage in p["state"]["stages"]]
            curve += [(step + offset, *rest) for step, *rest in p["state"]["curve"]]
            offset += p["state"]["step"]
        return {"stages": stages, "curve": curve}


def _phase_dir(run_dir: Path, index: int) -> Path:
    return run_dir if index == 0 else run_dir / f"phase{index}"


def run_recipe(model: StructuredFlow, target: Target, phases: list[Phase], run_dir: str | Path, seed: int,
               logger: MetricLogger | None = None, resume: bool = False) -> RecipeResult:
    """Run ``phases`` in order (module docstring); returns their records."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_NAME
    result, start = RecipeResult(), 0
    if resume and state_path.is_file():
        saved = load_torch(state_path, map_location=next(model.parameters()).device, what="recipe state")
        model.match_slow_prior(saved["model"]).load_state_dict(saved["model"])
        target.n_energy_evaluations = saved["energy_evaluations"]
        set_rng_state(saved["rng"])
        result.phases, start = saved["phases"], len(saved["phases"])
        log.info("recipe: resumed after phase %d of %d", start - 1, len(phases))
    for index in range(start, len(phases)):
        phase = phases[index]
        if phase.kind == "train":
            phase_dir = _phase_dir(run_dir, index)
            trainer = Trainer(model, target, *build_training(phase.settings), phase_dir, logger)
            # phase 0 must have a checkpoint to resume from (a clear error otherwise); a later
            # phase may not have started yet when the run was killed
            state = trainer.fit(resume=resume and (index == 0 or (phase_dir / CHECKPOINT_NAME).is_file()))
            result.phases.append({"kind": "train", "state": state})
        else:
            started = time.perf_counter()
            records = refit_slow_prior(model, target, build_from_options(PriorRefitConfig, "prior_refit", phase.settings), seed=seed)
            result.phases.append({"kind": "refit", "records": records, "wall_time_s": time.perf_counter() - started})
        save_atomic(
            {"model": model.state_dict(), "rng": rng_state(), "energy_evaluations": target.n_energy_evaluations, "phases": result.phases},
            state_path,
        )
        log.info("recipe: phase %d (%s) done, %d energy evaluations so far", index, phase.kind, target.n_energy_evaluations)
    return result
