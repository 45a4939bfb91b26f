"""The active-learning loop for a CG potential, with a journal that makes it resumable.

Round r = 0 … R runs the steps

    train     fit (r = 0) or fine-tune (r > 0) a committee of CGSchNet models on all labels so far
              (old regions stay in the data, so they are not forgotten), then re-invert each model's
              dihedral terms on the prior's frames with its network's energy (``dihedral_reinversion``;
              the network itself is always fitted against the prior inverted before any label);
    simulate  batched BAOAB from data frames with the committee's mean force; stopped replicas
              are counted and dropped;
    evaluate  W1 / Ramachandran KL of the simulated frames against the reference (if given), and the
              committee's force-matching loss on held-out equilibrium labels (``held_out_draws`` > 0,
              flow oracle: :func:`~flowcg.active.evaluate.held_out_force_error`, what the labels teach);
    select    at most M query frames among the candidates (a :mod:`~flowcg.active.selection` strategy):
              the simulated frames, or one-shot draws of the flow oracle (``candidates="flow"``);
    query     the oracle labels them;
    add       the labels join the dataset,

with the last round stopping after ``evaluate``. Every step writes its output under
``round_XXX/`` before the :class:`~flowcg.active.journal.Journal` records it, and draws its
randomness from (seed, round, step) alone, so a resumed run repeats an interrupted step exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.evaluate import CGReference, held_out_force_error, held_out_labels
from flowcg.active.flow_oracle import FlowOracle
from flowcg.active.journal import Journal
from flowcg.active.labels import Labels, Oracle
from flowcg.cg.mapping import CGMapping
from flowcg.cg.prior import DIHEDRAL_MODES, INVERTED_DIHEDRAL_MODES, fit_prior, invert_dihedral_terms
from flowcg.cg.schnet import CGSchNet, committee_forces
from flowcg.cg.training import FitOptions, fit_force_matching, tica_free_energy
from flowcg.errors import ConfigError, InputError
from flowcg.io import load_npz, load_torch, save_atomic, save_json_atomic, save_npz_atomic
from flowcg.md.langevin import LangevinBAOAB
from flowcg.units import kT

__all__ = ["ActiveLearningLoop", "LoopOptions", "ModelOptions", "SimulationOptions"]

log = logging.getLogger(__name__)

STEPS = ("train", "simulate", "evaluate", "select", "query", "add")
DIHEDRAL_REINVERSIONS = ("after_fit", "once")
QUERY_WEIGHTS = ("labels", "unit", "importance")
CANDIDATES = ("simulation", "flow")
#: seed offset of the prior's flow draws, so that they are not the initial draws of initial.source=flow
PRIOR_SEED_OFFSET = 7919
#: seed offset of the held-out flow draws of the evaluation, apart from every draw the loop learns from
HELD_OUT_SEED_OFFSET = 271_828


@dataclass
class ModelOptions:
    """CGSchNet size and prior (see :class:`~flowcg.cg.schnet.CGSchNet`, :func:`~flowcg.cg.prior.fit_prior`)."""

    hidden: int = 32
    n_filters: int = 32
    n_rbf: int = 16
    cutoff: float = 1.2
    n_interactions: int = 2
    # Signed dihedral terms: CGSchNet sees bead distances only, which are the same for a frame and
    # its mirror image, so without them the model cannot tell αR (φ < 0) from αL (φ > 0).
    # "boltzmann_2d" inverts one coupled term per consecutive pair (φ, ψ) from the prior's frames,
    # "boltzmann" one 1-D term per dihedral, "learned" fits 1-D terms by force matching
    # (flowcg.cg.prior: inversion needs equilibrium frames, force matching does not), "none".
    dihedral_prior: str = "boltzmann_2d"
    # Frames of the Boltzmann inversion: 0 = the initial data; n > 0 = n one-shot draws of the flow
    # oracle resampled by weight (n energy evaluations, no labels). Inversion reads the free energy of
    # each CG dihedral off a histogram, and 500 initial frames put about one frame at φ > 0 (0.2 % of
    # the ensemble), so the prior sets that basin's level from a pseudocount; the flow's draws are the
    # cheapest way to many equilibrium frames, and the CG model needs no forces of them.
    prior_draws: int = 0
    # Or the prior's frames read from a file: another run's prior_frames.npz, so that two loops (e.g.
    # with different oracles) start from the same prior. Its oracle cost is counted in this run too.
    prior_frames: str | None = None
    # When the inverted dihedral terms are read off the prior's frames: "after_fit" (after every fit
    # and fine-tune, with the network's energy in the reweighting, so that the whole model keeps the
    # frames' dihedral marginal and the labels shape the rest: flowcg.cg.prior.invert_dihedral_terms)
    # or "once" (before any label; a network then moves the basins' balance as its force fit says).
    dihedral_reinversion: str = "after_fit"
    dtype: str = "float32"

    def __post_init__(self):
        if self.dihedral_reinversion not in DIHEDRAL_REINVERSIONS:
            raise ConfigError(f"cg_model.dihedral_reinversion must be one of {', '.join(DIHEDRAL_REINVERSIONS)}, "
                              f"got '{self.dihedral_reinversion}'")
        if self.prior_draws < 0:
            raise ConfigError(f"cg_model.prior_draws must be ≥ 0, got {self.prior_draws}")
        if self.prior_draws and self.prior_frames:
            raise ConfigError("cg_model.prior_draws and cg_model.prior_frames both choose the prior's frames: set one")
        if self.dihedral_prior not in DIHEDRAL_MODES:
            raise ConfigError(f"cg_model.dihedral_prior must be one of {', '.join(DIHEDRAL_MODES)}, got '{self.dihedral_prior}'")


@dataclass
class SimulationOptions:
    """CG Langevin runs per round: replicas, length, saving and the frames skipped as burn-in.

    Replicas start from frames of the initial data (``start_from="initial"``: every arm and
    round starts alike, so the evaluation compares models, not starting sets) or of all labels
    so far (``"data"``). The last round's run, which only serves the evaluation, can be made
    longer with ``final_n_steps``, wider with ``final_n_replicas``, with another burn-in with ``final_burn_in_saves``
    and started elsewhere with ``final_start_from`` (each ``final_<name>`` null: ``<name>``): ``"reference"``
    starts it from frames of the evaluation reference, a spread over every basin that is the same
    for every arm (a CG model that is right stays there; started in one basin, a short run measures
    how far the model got, not where it settles). Only the last round may start there: a round
    whose frames become queries would otherwise learn from the yardstick.

    ``final_bias_factor`` γ > 1 biases the last round's run by V = −(1 − 1/γ) U_dihedral, U_dihedral
    the dihedral terms of the prior inverted before any label (≈ the frames' free energy of the CG
    dihedrals), and weighs each frame by exp(+V/kT): the evaluation then measures the model's own
    ensemble (exact for any V of the dihedrals alone) with the basins' barriers lowered by the share
    1 − 1/γ, so that a basin holding 0.2 % of the ensemble, which 64 unbiased replicas visit as a
    handful of crossings or none, is sampled and weighed (well-tempered metadynamics' bias at
    convergence, frozen in advance; Barducci et al. 2008)."""

    n_replicas: int = 64
    n_steps: int = 3000
    save_every: int = 30
    burn_in_saves: int = 10
    timestep_ps: float = 0.002
    friction_per_ps: float = 1.0
    start_from: str = "initial"
    final_n_steps: int | None = None
    final_n_replicas: int | None = None
    final_burn_in_saves: int | None = None
    final_start_from: str | None = None
    final_bias_factor: float | None = None

    def __post_init__(self):
        if self.save_every < 1:
            raise ConfigError(f"simulation.save_every must be >= 1, got {self.save_every}")
        for final in (False, True):  # checked here, not when the run starts: the last round comes after all training
            name = "final_burn_in_saves" if final and self.final_burn_in_saves is not None else "burn_in_saves"
            burn_in, n_saves = self.setting("burn_in_saves", final), self.setting("n_steps", final) // self.save_every
            if burn_in < 0:
                raise ConfigError(f"simulation.{name} must be >= 0, got {burn_in}")
            if burn_in >= n_saves:
                raise ConfigError(f"simulation: a burn-in of {burn_in} saves leaves none of the {n_saves} saves of "
                                  f"{'the last round' if final else 'a round'} ({name} too large)")
        if self.final_bias_factor is not None and not self.final_bias_factor > 1:
            raise ConfigError(f"simulation.final_bias_factor must be null (no bias) or > 1, got {self.final_bias_factor}")
        if self.start_from not in ("initial", "data"):
            raise ConfigError(f"simulation.start_from must be 'initial' (frames of the initial data) or 'data' (all labels so far), got '{self.start_from}'")
        if self.final_start_from not in (None, "initial", "data", "reference"):
            raise ConfigError("simulation.final_start_from must be null (= start_from), 'initial', 'data' or 'reference', "
                              f"got '{self.final_start_from}'")

    def setting(self, name: str, final: bool):
        """``final_<name>`` for the last round's run where it is set, else ``<name>``."""
        override = getattr(self, f"final_{name}") if final else None
        return getattr(self, name) if override is None else override


@dataclass
class LoopOptions:
    """rounds R; queries_per_round M; committee_size models (≥ 2 for the committee strategy);
    fit: the first fit; finetune_steps: steps of each later fine-tune; max_candidates: frames
    offered to the strategy; candidates: where they come from, ``"simulation"`` (a seeded
    subsample of the round's CG MD frames) or ``"flow"`` (one-shot draws of the flow oracle,
    :meth:`FlowOracle.proposals`); query_weight: what a round's labels weigh, ``"labels"`` (the
    oracle's weights), ``"unit"`` (one per query) or ``"importance"`` (an equilibrium design again:
    the oracle's joint importance weights times the strategy's design weights,
    :meth:`Labels.importance_weighted`; needs ``candidates="flow"``, whose density is known, and a
    strategy that draws with known probabilities); temperature_K of the CG model; held_out_draws: the
    evaluation's held-out labels, that many one-shot draws of the flow oracle resampled by weight
    (:meth:`FlowOracle.equilibrium`, seed + :data:`HELD_OUT_SEED_OFFSET`, kept in ``held_out_labels.npz``), on
    which every round's models are scored (0: none; needs the flow oracle)."""

    rounds: int = 4
    queries_per_round: int = 25
    committee_size: int = 1
    fit: FitOptions = field(default_factory=FitOptions)
    finetune_steps: int = 500
    max_candidates: int = 2000
    temperature_K: float = 300.0
    seed: int = 0
    query_weight: str = "unit"
    candidates: str = "simulation"
    held_out_draws: int = 20_000

    def __post_init__(self):
        if self.held_out_draws < 0:
            raise ConfigError(f"loop.held_out_draws must be ≥ 0, got {self.held_out_draws}")
        if self.query_weight not in QUERY_WEIGHTS:
            raise ConfigError(f"loop.query_weight must be one of {', '.join(QUERY_WEIGHTS)}, got '{self.query_weight}'")
        if self.candidates not in CANDIDATES:
            raise ConfigError(f"loop.candidates must be one of {', '.join(CANDIDATES)}, got '{self.candidates}'")
        if self.query_weight == "importance" and self.candidates != "flow":
            raise ConfigError("loop.query_weight=importance needs loop.candidates=flow: weights undo a pick only from a pool of known density")


def _seed(seed: int, round_index: int, step: str, member: int = 0) -> int:
    return ((seed * 1009 + round_index) * 17 + STEPS.index(step)) * 101 + member


class ActiveLearningLoop:
    """One run of the loop in ``run_dir`` (module docstring).

    Args:
        run_dir: where the journal and every round's outputs live; rerunning resumes.
        mapping: the CG mapping.
        backmapper: CG frame → (φ, ψ) and an all-atom structure (for the metrics and oracles).
        oracle: labels query frames.
        strategy: a query strategy (``select(candidates, training, m, rng, committee)``).
        initial: labels of the initial data (e.g. a short MD); they also fit the TICA of the
            energy-matching targets, and the prior unless ``model_options.prior_draws`` > 0.
        initial_tica: TICA model for the energy-matching targets (needed iff λ > 0).
        reference: the evaluation yardstick (None: the evaluate step records only simulation facts).
    """

    def __init__(self, run_dir: str | Path, mapping: CGMapping, backmapper: TorsionBackmapper, oracle: Oracle, strategy,
                 initial: Labels, options: LoopOptions, model_options: ModelOptions, simulation: SimulationOptions,
                 reference: CGReference | None = None, initial_tica=None, on_step: Callable[[int, str], None] | None = None):
        if options.fit.energy_weight > 0 and initial_tica is None:
            raise ConfigError("energy matching needs the TICA model of the initial data")
        self.uses_committee = getattr(strategy, "needs_committee", False)
        if self.uses_committee and options.committee_size < 2:
            raise ConfigError(f"the {strategy.name} strategy needs a committee: loop.committee_size ≥ 2")
        if options.query_weight == "importance" and not getattr(strategy, "knows_probabilities", False):
            raise ConfigError(f"loop.query_weight=importance needs a strategy that draws with known probabilities "
                              f"(random, importance_sampling), not '{strategy.name}'")
        if options.candidates == "flow" and not isinstance(oracle, FlowOracle):
            raise ConfigError("loop.candidates=flow needs the flow oracle (oracle=flow)")
        if simulation.final_start_from == "reference" and reference is None:
            raise ConfigError("simulation.final_start_from=reference needs an evaluation reference")
        if simulation.final_bias_factor is not None and model_options.dihedral_prior not in INVERTED_DIHEDRAL_MODES:
            raise ConfigError(f"simulation.final_bias_factor biases by the inverted dihedral terms: it needs cg_model.dihedral_prior "
                              f"{' or '.join(INVERTED_DIHEDRAL_MODES)}, not '{model_options.dihedral_prior}'")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mapping, self.backmapper, self.oracle, self.strategy = mapping, backmapper, oracle, strategy
        self.initial, self.options, self.model_options, self.simulation = initial, options, model_options, simulation
        self.reference, self.initial_tica = reference, initial_tica
        self.on_step = on_step
        self.journal = Journal(self.run_dir / "journal.json")
        initial_path = self.run_dir / "initial_labels.npz"
        if not initial_path.is_file():
            initial.save(initial_path)
        # a deterministic function of data fixed before round 0: fitted once, copied into every model
        prior_frames = self._prior_frames()
        self.prior_frames_nm = prior_frames["cg_positions_nm"]
        #: whether every fit is followed by the re-inversion of the models' dihedral terms (a network to fit, inverted terms)
        self.reinverts_dihedrals = (model_options.dihedral_reinversion == "after_fit" and model_options.n_interactions > 0
                                    and model_options.dihedral_prior in INVERTED_DIHEDRAL_MODES)
        self.prior = fit_prior(prior_frames["cg_positions_nm"], mapping, options.temperature_K, dihedrals=model_options.dihedral_prior)
        #: what the prior's own frames cost the oracle (0 when the initial data serve)
        self.prior_cost = {"prior_evaluations": int(prior_frames["n_energy_evaluations"]), "prior_wall_s": float(prior_frames["wall_s"])}
        self.held_out = self._held_out_labels()

    def _prior_frames(self) -> dict:
        """The CG frames of the prior's Boltzmann inversion and their oracle cost: the initial data's
        (free), or with ``model_options.prior_draws`` = n > 0, n one-shot draws of the flow oracle
        resampled by weight (:meth:`FlowOracle.equilibrium`), saved in ``prior_frames.npz`` so that
        a resumed run fits the same prior, or those of ``model_options.prior_frames`` (such a file)."""
        n_draws = self.model_options.prior_draws
        if self.model_options.prior_frames:
            frames = load_npz(self.model_options.prior_frames, what="prior frames", keys=["cg_positions_nm", "n_energy_evaluations", "wall_s"])
            if frames["cg_positions_nm"].shape[1:] != (self.mapping.n_beads, 3):
                raise InputError(f"{self.model_options.prior_frames}: prior frames of shape {frames['cg_positions_nm'].shape[1:]}, "
                                 f"the mapping has ({self.mapping.n_beads}, 3)")
            return frames
        if n_draws == 0:
            return {"cg_positions_nm": self.initial.cg_positions_nm, "n_energy_evaluations": 0, "wall_s": 0.0}
        path = self.run_dir / "prior_frames.npz"
        if path.is_file():
            return load_npz(path, what="prior frames", keys=["cg_positions_nm", "n_energy_evaluations", "wall_s"])
        if not isinstance(self.oracle, FlowOracle):
            raise ConfigError("cg_model.prior_draws > 0 needs the flow oracle (oracle=flow)")
        draws = self.oracle.equilibrium(n_draws, seed=self.options.seed + PRIOR_SEED_OFFSET)
        frames = {"cg_positions_nm": draws.cg_positions_nm.astype(np.float32), "n_energy_evaluations": draws.n_energy_evaluations,
                  "wall_s": draws.wall_s}
        save_npz_atomic(path, **frames)
        return frames

    def _held_out_labels(self) -> Labels | None:
        """The evaluation's held-out labels (:class:`LoopOptions`), drawn once and read back on resume; None when
        ``held_out_draws`` is 0, or (logged) when the oracle is not a flow."""
        n = self.options.held_out_draws
        if n == 0:
            return None
        if not isinstance(self.oracle, FlowOracle):
            log.warning("loop.held_out_draws=%d: held-out labels are flow draws, and the oracle is '%s'; no held-out force error",
                        n, getattr(self.oracle, "name", type(self.oracle).__name__))
            return None
        return held_out_labels(self.oracle, n, self.options.seed + HELD_OUT_SEED_OFFSET, self.run_dir / "held_out_labels.npz")

    # ------------------------------------------------------------------ data
    def round_dir(self, round_index: int) -> Path:
        return self.run_dir / f"round_{round_index:03d}"

    def dataset(self, round_index: int) -> Labels:
        """Initial labels plus those added in rounds < round_index (journalled ``add`` steps only),
        the rounds' weighted as ``options.query_weight`` says."""
        done = [r for r in range(round_index) if self.journal.done(r, "add")]
        rounds = [Labels.load(self.round_dir(r) / "labels.npz") for r in done]
        if self.options.query_weight == "unit":
            rounds = [labels.per_query_unit_weight() for labels in rounds]
        elif self.options.query_weight == "importance":
            rounds = [labels.importance_weighted(self._design_weights(r)) for r, labels in zip(done, rounds)]
        return Labels.concatenate([self.initial] + rounds)

    # ------------------------------------------------------------------ models
    def new_model(self) -> CGSchNet:
        o = self.model_options
        return CGSchNet(self.mapping.bead_types, hidden=o.hidden, n_filters=o.n_filters, n_rbf=o.n_rbf, cutoff=o.cutoff,
                        n_interactions=o.n_interactions, prior=copy.deepcopy(self.prior)).to(getattr(torch, o.dtype))

    def committee(self, round_index: int) -> list[CGSchNet]:
        states = load_torch(self.round_dir(round_index) / "models.pt", what="committee file")["models"]
        models = []
        for state in states:
            model = self.new_model()
            model.load_state_dict(state)
            models.append(model.eval())
        return models

    # ------------------------------------------------------------------ steps
    def _train(self, r: int) -> dict:
        data = self.dataset(r)
        energy_targets = None
        if self.options.fit.energy_weight > 0:
            with torch.no_grad():
                prior_energy = self.prior.fixed_energy(torch.as_tensor(data.cg_positions_nm)).numpy()
            energy_targets = tica_free_energy(data.cg_positions_nm, data.weights, self.initial_tica, self.options.temperature_K) - prior_energy
        previous = self.committee(r - 1) if r > 0 else None
        fit = self.options.fit if r == 0 else FitOptions(**{**asdict(self.options.fit), "steps": self.options.finetune_steps})
        states, losses, reweighting_ess = [], [], []
        for member in range(self.options.committee_size):
            torch.manual_seed(_seed(self.options.seed, r, "train", member))
            model = self.new_model() if previous is None else self._with_label_free_prior(previous[member])
            losses.append(fit_force_matching(model, data.cg_positions_nm, data.cg_forces_kJ_mol_nm, data.weights, fit,
                                             seed=_seed(self.options.seed, r, "train", member), energy_targets_kJ_mol=energy_targets))
            if self.reinverts_dihedrals:
                reweighting_ess.append(self.reinvert_dihedrals(model))
            states.append(model.state_dict())
        save_atomic({"models": states}, self.round_dir(r) / "models.pt")
        info = {"n_rows": len(data), "n_queries": data.n_queries, "force_mse": float(np.mean([l["force_mse"] for l in losses]))}
        if reweighting_ess:
            info["dihedral_reweighting_ess"] = min(reweighting_ess)
        return info

    def _with_label_free_prior(self, model: CGSchNet) -> CGSchNet:
        """``model`` with the prior inverted before any label instead of its own re-inversion, for its next
        fine-tune. A fit against the re-inverted terms would feed back: force matching pushes the network
        against the terms that undo its dihedral share, the next re-inversion undoes more, and the
        network's energy spread and the reweighting's variance grow round by round (measured: the weights'
        ESS 0.28 → 0.02 over four rounds)."""
        if self.reinverts_dihedrals:
            model.prior.load_state_dict(self.prior.state_dict())
        return model

    def reinvert_dihedrals(self, model: CGSchNet) -> float:
        """Refit, in place, ``model``'s dihedral terms on the prior's frames with its network's energy (in
        the model's precision) in the weights (:func:`~flowcg.cg.prior.invert_dihedral_terms`); returns the
        weights' Kish ESS fraction. What ``cg_model.dihedral_reinversion=after_fit`` does after every fit."""
        with torch.no_grad():
            network = model.network_energy(torch.as_tensor(self.prior_frames_nm, dtype=model.dtype)).double().numpy()
        return invert_dihedral_terms(model.prior, self.prior_frames_nm, self.options.temperature_K, network)

    def _simulate(self, r: int) -> dict:
        models = self.committee(r)
        mean_force = partial(committee_forces, models)
        s = self.simulation
        final = r == self.options.rounds
        start_from, n_replicas = s.setting("start_from", final), s.setting("n_replicas", final)
        n_steps, burn_in_saves = s.setting("n_steps", final), s.setting("burn_in_saves", final)
        rng = np.random.default_rng(_seed(self.options.seed, r, "simulate"))
        if start_from == "reference":  # resampled by weight already: an unweighted ensemble
            n_frames = len(self.reference.frames_nm)
            start_frames = self.reference.frames_nm[rng.choice(n_frames, size=n_replicas, replace=n_frames < n_replicas)]
        else:
            data = self.initial if start_from == "initial" else self.dataset(r)
            start_frames = data.cg_positions_nm[rng.choice(len(data), size=n_replicas, replace=True, p=data.weights / data.weights.sum())]
        biased = final and s.final_bias_factor is not None
        force = self._biased(mean_force) if biased else mean_force
        integrator = LangevinBAOAB(force, self.mapping.masses, s.timestep_ps, s.friction_per_ps, self.options.temperature_K)
        dtype = models[0].dtype
        result = integrator.run(torch.as_tensor(start_frames, dtype=dtype), n_steps, s.save_every,
                                seed=_seed(self.options.seed, r, "simulate"))
        frames, alive = result.frames[burn_in_saves:].numpy(), result.alive[burn_in_saves:].numpy()
        record = {"frames": frames, "alive": alive}
        if biased:  # w = exp(+V/kT)
            with torch.no_grad():
                bias = self._final_bias_kj_mol(torch.as_tensor(frames.reshape(-1, *frames.shape[2:])))
            record["log_weights"] = bias.numpy().reshape(frames.shape[:2]) / kT(self.options.temperature_K)
        save_npz_atomic(self.round_dir(r) / "simulation.npz", **record)
        return {"n_replicas": n_replicas, "n_stopped": int(len(result.stopped)),
                "stop_reasons": sorted({reason for reason in result.stop_reason if reason})}

    def _final_bias_kj_mol(self, x: torch.Tensor) -> torch.Tensor:
        """V (B,) in kJ/mol (float64) of the last round's run: −(1 − 1/γ) U_dihedral of the label-free
        prior, γ = ``simulation.final_bias_factor`` (:class:`SimulationOptions`)."""
        return -(1 - 1 / self.simulation.final_bias_factor) * self.prior.dihedral_energy(x.to(torch.float64))

    def _biased(self, force: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``force`` plus the bias's force −∇V (:meth:`_final_bias_kj_mol`)."""

        def biased(x: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                y = x.detach().to(torch.float64).requires_grad_(True)
                (gradient,) = torch.autograd.grad(self._final_bias_kj_mol(y).sum(), y)
            return force(x) - gradient.to(x.dtype)

        return biased

    def simulated_frames(self, r: int) -> np.ndarray:
        """(n, n_beads, 3) frames of round r's simulation from replicas still running."""
        return self._simulation_record(r)[0]

    def _simulation_record(self, r: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Round r's frames from replicas still running and their log weights (None: an unbiased run)."""
        sim = load_npz(self.round_dir(r) / "simulation.npz", what="CG simulation record", keys=["frames", "alive"], optional=["log_weights"])
        log_weights = sim["log_weights"][sim["alive"]] if "log_weights" in sim else None
        return sim["frames"][sim["alive"]], log_weights

    def _evaluate(self, r: int) -> dict:
        frames, log_weights = self._simulation_record(r)
        metrics = {"round": r, "n_frames": len(frames)}
        if self.reference is not None:
            metrics.update(self.reference.evaluate(frames, self.backmapper, seed=self.options.seed, log_weights=log_weights))
        if self.held_out is not None:
            scored = held_out_force_error(self.committee(r), self.held_out, self.backmapper)
            metrics.update({f"held_out_{k}": v for k, v in scored.items() if k != "row_errors"})
        data = self.dataset(r)
        metrics.update(n_labels=len(data), n_queries=data.n_queries,
                       oracle_evaluations=sum(self.journal.entry(q, "query")["n_energy_evaluations"] for q in range(r)),
                       oracle_wall_s=sum(self.journal.entry(q, "query")["wall_s"] for q in range(r)))
        save_json_atomic(metrics, self.round_dir(r) / "metrics.json")
        return metrics

    def _design_weights(self, r: int) -> np.ndarray:
        return load_npz(self.round_dir(r) / "queries.npz", what="query file", keys=["design_weights"])["design_weights"]

    def _candidates(self, r: int, rng: np.random.Generator) -> np.ndarray:
        if self.options.candidates == "flow":
            return self.oracle.proposals(self.options.max_candidates, seed=_seed(self.options.seed, r, "select"))
        frames = self.simulated_frames(r)
        if len(frames) > self.options.max_candidates:
            frames = frames[np.sort(rng.choice(len(frames), self.options.max_candidates, replace=False))]
        return frames

    def _select(self, r: int) -> dict:
        rng = np.random.default_rng(_seed(self.options.seed, r, "select"))
        frames = self._candidates(r, rng)
        committee = None
        if self.uses_committee:
            models = self.committee(r)
            dtype = models[0].dtype
            committee = [lambda x, m=m: m.forces(x.to(dtype), create_graph=False) for m in models]
        training = self.dataset(r).cg_positions_nm
        if self.options.query_weight == "importance":
            chosen, design = self.strategy.select_weighted(frames, training, self.options.queries_per_round, rng, committee)
        else:
            chosen = self.strategy.select(frames, training, self.options.queries_per_round, rng, committee)
            design = np.ones(len(chosen))
        save_npz_atomic(self.round_dir(r) / "queries.npz", frames=frames[chosen], design_weights=design)
        return {"n_candidates": len(frames), "n_selected": len(chosen)}

    def _query(self, r: int) -> dict:
        queries = load_npz(self.round_dir(r) / "queries.npz", what="query file", keys=["frames"])["frames"]
        if len(queries):
            labels = self.oracle.label(queries, seed=_seed(self.options.seed, r, "query"))
        else:
            labels = Labels.empty(self.mapping.n_atoms, self.mapping.n_beads)
        labels.save(self.round_dir(r) / "labels.npz")
        return {"n_queries": len(queries), "n_labels": len(labels), "n_energy_evaluations": int(labels.n_energy_evaluations),
                "wall_s": float(labels.wall_s)}

    def _add(self, r: int) -> dict:
        return {"n_labels": len(Labels.load(self.round_dir(r) / "labels.npz"))}

    def simulate_and_evaluate(self, r: int) -> dict:
        """Round r's CG MD and its evaluation, run again and overwritten; in a copy of a finished
        run with another ``options.seed`` this measures the evaluation's own noise
        (``data_free_benchmarks/al_final_md_noise.py``)."""
        self._simulate(r)
        return self._evaluate(r)

    # ------------------------------------------------------------------ driver
    def run(self) -> list[dict]:
        """Run (or resume) every round; returns each round's metrics."""
        actions = {"train": self._train, "simulate": self._simulate, "evaluate": self._evaluate, "select": self._select,
                   "query": self._query, "add": self._add}
        for r in range(self.options.rounds + 1):
            self.round_dir(r).mkdir(parents=True, exist_ok=True)
            for step in STEPS if r < self.options.rounds else STEPS[:3]:
                if self.journal.done(r, step):
                    continue
                start = time.perf_counter()
                info = actions[step](r)
                self.journal.record(r, step, wall_s_step=time.perf_counter() - start, **info)
                log.info("round %d %s: %s", r, step, info)
                if self.on_step is not None:
                    self.on_step(r, step)
        return [json.loads((self.round_dir(r) / "metrics.json").read_text()) for r in range(self.options.rounds + 1)]
