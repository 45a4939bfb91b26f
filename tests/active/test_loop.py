"""The active-learning loop: a tiny end-to-end run on aldp_vacuum, exact resume after a kill, labels."""

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.evaluate import held_out_force_error
from flowcg.active.flow_oracle import FlowOracle
from flowcg.active.journal import Journal
from flowcg.active.labels import Labels
from flowcg.active.loop import ActiveLearningLoop, LoopOptions, ModelOptions, SimulationOptions
from flowcg.active.selection import build_strategy
from flowcg.cg.mapping import CGMapping
from flowcg.cg.prior import invert_dihedral_terms
from flowcg.cg.training import FitOptions
from flowcg.errors import InputError
from flowcg.pretrained import load_pretrained

def loop_options(**settings) -> LoopOptions:
    """LoopOptions without the held-out evaluation (20 000 flow draws by default), unless a test asks for it."""
    return LoopOptions(**{"held_out_draws": 0, **settings})


TINY_MODEL = ModelOptions(hidden=16, n_filters=16, n_rbf=8, n_interactions=1)
TINY_SIMULATION = SimulationOptions(n_replicas=6, n_steps=200, save_every=10, burn_in_saves=2)
TINY_LOOP = loop_options(rounds=2, queries_per_round=4, fit=FitOptions(steps=30, batch_size=32), finetune_steps=10, max_candidates=50)


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def parts():
    run = load_pretrained("aldp_vacuum")
    mapping = CGMapping.aldp_backbone(run.target.topology)
    backmapper = TorsionBackmapper(run.model.coordinates, run.target.positions, mapping)
    oracle = FlowOracle(run.model, run.target, mapping, backmapper, samples_per_query=4)
    draws = run.model.sample(12)
    initial = oracle.label(mapping.map_positions(draws.x.double().numpy()), seed=11)
    return mapping, backmapper, oracle, initial


def make_loop(run_dir, parts, on_step=None, oracle=None, strategy="diversity", options=TINY_LOOP, model=TINY_MODEL):
    mapping, backmapper, flow_oracle, initial = parts
    return ActiveLearningLoop(run_dir, mapping, backmapper, oracle or flow_oracle, build_strategy(strategy), initial,
                              options, model, TINY_SIMULATION, on_step=on_step)


def test_flow_oracle_labels_carry_the_query_torsions_and_weights(parts):
    mapping, backmapper, oracle, initial = parts
    assert initial.n_queries == 12 and len(initial) == 48
    per_query = np.bincount(initial.query, weights=initial.weights)
    assert np.all((per_query >= 1 - 1e-9) & (per_query <= 4 + 1e-9))  # Kish ESS of 4 draws
    np.testing.assert_allclose(initial.cg_positions_nm, mapping.map_positions(initial.positions_nm))
    again = oracle.label(initial.cg_positions_nm[::4], seed=11)
    np.testing.assert_allclose(backmapper.torsions(again.cg_positions_nm), backmapper.torsions(initial.cg_positions_nm[::4])[again.query], atol=1e-3)


def test_resume_after_kill_repeats_the_uninterrupted_run(tmp_path, parts):
    whole = make_loop(tmp_path / "whole", parts).run()

    for kill_at in [(0, "query"), (1, "train")]:
        def on_step(r, step, kill_at=kill_at):
            if (r, step) == kill_at:
                raise Killed

        run_dir = tmp_path / f"killed_{kill_at[0]}_{kill_at[1]}"
        with pytest.raises(Killed):
            make_loop(run_dir, parts, on_step).run()
        resumed = make_loop(run_dir, parts).run()
        assert len(resumed) == len(whole)
        for a, b in zip(whole, resumed):
            assert a["n_labels"] == b["n_labels"] and a["oracle_evaluations"] == b["oracle_evaluations"]
        final = make_loop(run_dir, parts).dataset(TINY_LOOP.rounds)
        expected = make_loop(tmp_path / "whole", parts).dataset(TINY_LOOP.rounds)
        np.testing.assert_array_equal(final.cg_forces_kJ_mol_nm, expected.cg_forces_kJ_mol_nm)
        np.testing.assert_array_equal(np.load(run_dir / "round_002" / "simulation.npz")["frames"],
                                      np.load(tmp_path / "whole" / "round_002" / "simulation.npz")["frames"])

    # query_weight=unit (the default) reads the same labels as "labels" with each round's query worth one configuration
    labelled = make_loop(tmp_path / "whole", parts, options=replace(TINY_LOOP, query_weight="labels")).dataset(TINY_LOOP.rounds)
    unit = make_loop(tmp_path / "whole", parts).dataset(TINY_LOOP.rounds)
    initial_rows = len(parts[3])
    np.testing.assert_array_equal(unit.weights[:initial_rows], labelled.weights[:initial_rows])
    per_query = np.bincount(unit.query[initial_rows:], weights=unit.weights[initial_rows:])[parts[3].n_queries:]
    np.testing.assert_allclose(per_query, 1.0)
    assert len(per_query) == TINY_LOOP.rounds * TINY_LOOP.queries_per_round


def test_a_kill_inside_the_oracle_loses_and_duplicates_nothing(tmp_path, parts):
    mapping, backmapper, flow_oracle, initial = parts

    class DiesOnce:
        name = "flow"
        calls = 0

        def label(self, frames, seed):
            DiesOnce.calls += 1
            if DiesOnce.calls == 2:
                raise Killed
            return flow_oracle.label(frames, seed)

    with pytest.raises(Killed):
        make_loop(tmp_path, parts, oracle=DiesOnce()).run()
    assert Journal(tmp_path / "journal.json").done(0, "add") and not Journal(tmp_path / "journal.json").done(1, "query")
    make_loop(tmp_path, parts, oracle=DiesOnce()).run()
    data = make_loop(tmp_path, parts).dataset(TINY_LOOP.rounds)
    added = [Labels.load(tmp_path / f"round_{r:03d}" / "labels.npz") for r in range(TINY_LOOP.rounds)]
    assert len(data) == len(initial) + sum(len(a) for a in added)
    assert len(np.unique(data.positions_nm.reshape(len(data), -1), axis=0)) == len(data)


def test_committee_strategy_trains_and_queries_a_committee(tmp_path, parts):
    options = loop_options(rounds=1, queries_per_round=3, committee_size=2, fit=FitOptions(steps=10, batch_size=16), finetune_steps=5)
    with pytest.raises(ValueError, match="committee_size"):
        make_loop(tmp_path / "one", parts, strategy="committee")
    loop = make_loop(tmp_path, parts, strategy="committee", options=options)
    metrics = loop.run()
    assert len(loop.committee(1)) == 2
    assert Journal(tmp_path / "journal.json").entry(0, "select")["n_selected"] == 3
    assert metrics[1]["n_queries"] == parts[3].n_queries + 3


def test_importance_weighted_rounds_pick_among_flow_draws_and_weigh_their_picks(tmp_path, parts):
    options = replace(TINY_LOOP, rounds=1, candidates="flow", query_weight="importance")
    loop = make_loop(tmp_path, parts, strategy="importance_sampling", options=options)
    loop.run()
    queries = np.load(tmp_path / "round_000" / "queries.npz")
    assert len(queries["frames"]) == len(queries["design_weights"]) == options.queries_per_round
    labels = Labels.load(tmp_path / "round_000" / "labels.npz")
    data = loop.dataset(1)
    np.testing.assert_allclose(data.weights[len(parts[3]):], labels.importance_weighted(queries["design_weights"]).weights)
    frames = np.load(tmp_path / "round_001" / "simulation.npz")["frames"]
    loop.simulate_and_evaluate(1)  # the same seed repeats the final run exactly (another seed measures its noise)
    np.testing.assert_array_equal(np.load(tmp_path / "round_001" / "simulation.npz")["frames"], frames)
    with pytest.raises(ValueError, match="candidates=flow"):
        replace(TINY_LOOP, query_weight="importance")
    with pytest.raises(ValueError, match="known probabilities"):
        make_loop(tmp_path / "greedy", parts, strategy="diversity", options=options)
    with pytest.raises(ValueError, match="needs the flow oracle"):
        make_loop(tmp_path / "md", parts, oracle=object(), options=replace(TINY_LOOP, candidates="flow"))


def test_dihedral_terms_are_reinverted_after_each_fit(tmp_path, parts):
    """cg_model.dihedral_reinversion=after_fit (the default): each saved model's dihedral term is the
    inversion of the prior's frames with that model's network energy in the weights (journalled with the
    weights' ESS); with "once" the models keep the loop's prior term."""
    options = loop_options(rounds=1, queries_per_round=2, fit=FitOptions(steps=20, batch_size=16), finetune_steps=5)
    loop = make_loop(tmp_path / "after_fit", parts, options=options)
    loop.run()
    for r in (0, 1):
        (model,) = loop.committee(r)
        expected = copy.deepcopy(loop.prior)
        with torch.no_grad():
            network = model.network_energy(torch.as_tensor(loop.prior_frames_nm, dtype=model.dtype)).double().numpy()
        ess = invert_dihedral_terms(expected, loop.prior_frames_nm, loop.options.temperature_K, network)
        torch.testing.assert_close(model.prior.terms["dihedral_pairs"].a, expected.terms["dihedral_pairs"].a)
        assert not torch.equal(model.prior.terms["dihedral_pairs"].a, loop.prior.terms["dihedral_pairs"].a)
        assert loop.journal.entry(r, "train")["dihedral_reweighting_ess"] == pytest.approx(ess)
    # the next fine-tune fits the network against the label-free prior, not against its own re-inversion
    refit = loop._with_label_free_prior(loop.committee(0)[0])
    torch.testing.assert_close(refit.prior.terms["dihedral_pairs"].a, loop.prior.terms["dihedral_pairs"].a)
    once = make_loop(tmp_path / "once", parts, options=options, model=replace(TINY_MODEL, dihedral_reinversion="once"))
    once.run()
    torch.testing.assert_close(once.committee(1)[0].prior.terms["dihedral_pairs"].a, once.prior.terms["dihedral_pairs"].a)
    assert "dihedral_reweighting_ess" not in once.journal.entry(0, "train")
    with pytest.raises(ValueError, match="dihedral_reinversion"):
        replace(TINY_MODEL, dihedral_reinversion="always")


def test_learned_dihedral_terms_are_trained_and_saved_with_each_model(tmp_path, parts):
    """cg_model.dihedral_prior=learned: the loop's prior holds zero coefficients; each round's model
    fits its own by force matching and models.pt carries them."""
    options = loop_options(rounds=1, queries_per_round=2, fit=FitOptions(steps=20, batch_size=16), finetune_steps=5)
    loop = make_loop(tmp_path, parts, options=options, model=replace(TINY_MODEL, dihedral_prior="learned"))
    loop.run()
    assert float(loop.prior.terms["dihedrals"].b.detach().abs().sum()) == 0.0
    first, second = (loop.committee(r)[0].prior.terms["dihedrals"].b.detach() for r in (0, 1))
    assert float(first.abs().sum()) > 0 and not torch.equal(first, second)
    with pytest.raises(ValueError, match="dihedral_prior"):
        replace(TINY_MODEL, dihedral_prior="true")


def test_the_prior_alone_runs_the_loop_with_a_2d_dihedral_term(tmp_path, parts):
    """cg_model.n_interactions=0 (the prior_only arm): nothing is fitted, the models are the prior, and
    the CG MD runs on its forces; dihedral_prior=boltzmann_2d couples φ and ψ in one term."""
    options = loop_options(rounds=0, fit=FitOptions(steps=5, batch_size=8))
    loop = make_loop(tmp_path, parts, options=options, model=replace(TINY_MODEL, n_interactions=0, dihedral_prior="boltzmann_2d"))
    loop.run()
    assert "dihedral_pairs" in loop.prior.terms and "dihedrals" not in loop.prior.terms
    (model,) = loop.committee(0)
    x = torch.as_tensor(parts[3].cg_positions_nm, dtype=torch.float32)
    torch.testing.assert_close(model(x), loop.prior(x))
    assert len(loop.simulated_frames(0)) > 0


def test_flowcg_al_runs_one_tiny_round_on_aldp_vacuum(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = ["target=aldp_vacuum", "oracle.pretrained=aldp_vacuum", "oracle.samples_per_query=4", "initial.n_frames=30",
                 "initial.frame_interval_steps=20", "initial.equilibration_steps=50", "initial.minimize_iterations=20",
                 "loop.rounds=1", "loop.queries_per_round=3", "strategy=random", "fit.steps=20", "loop.finetune_steps=5",
                 "simulation.n_replicas=4", "simulation.n_steps=100", "simulation.save_every=10", "simulation.burn_in_saves=2",
                 "cg_model.hidden=16", "cg_model.n_filters=16", "cg_model.n_interactions=1", "cg_model.prior_draws=40",
                 "loop.held_out_draws=50", f"hydra.run.dir={tmp_path}"]
    subprocess.run([sys.executable, "-m", "flowcg.cli.al", *overrides], check=True, env=env, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["round"] for m in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["n_labels"] == 30 + 3 * 4 and summary["rounds"][1]["oracle_evaluations"] == 12
    assert summary["initial_frames"] == 30 and summary["strategy"] == "random"
    assert summary["prior_evaluations"] == 40 and len(np.load(tmp_path / "prior_frames.npz")["cg_positions_nm"]) == 40
    assert (tmp_path / "free_energy_round_001.png").is_file()
    assert all(np.isfinite(m["held_out_force_mse"]) for m in summary["rounds"]) and len(Labels.load(tmp_path / "held_out_labels.npz")) == 50
    # a finished run resumes to the same result without doing any work
    subprocess.run([sys.executable, "-m", "flowcg.cli.al", *overrides], check=True, env=env, capture_output=True, timeout=600)
    assert json.loads((tmp_path / "metrics.json").read_text())["rounds"] == summary["rounds"]


def test_every_round_is_scored_on_one_held_out_set_drawn_once(tmp_path, parts):
    """loop.held_out_draws: the held-out labels are drawn once (their own seed), kept, read back by a resumed
    loop, and every round's committee is scored on them. Without a flow oracle the score is skipped (logged),
    not an error."""
    options = replace(TINY_LOOP, held_out_draws=40)
    loop = make_loop(tmp_path / "run", parts, options=options)
    metrics = loop.run()
    held_out = Labels.load(tmp_path / "run" / "held_out_labels.npz")
    assert len(held_out) == 40 and held_out.n_energy_evaluations == 40
    assert not np.isin(held_out.cg_positions_nm[:, 0, 0], parts[3].cg_positions_nm[:, 0, 0]).any()  # not the initial data
    for r, m in enumerate(metrics):
        expected = held_out_force_error(loop.committee(r), held_out, parts[1])
        assert m["held_out_force_mse"] == pytest.approx(expected["force_mse"]) and m["held_out_n_beta"] == expected["n_beta"]
    resumed = make_loop(tmp_path / "run", parts, options=options)
    np.testing.assert_array_equal(resumed.held_out.cg_forces_kJ_mol_nm, held_out.cg_forces_kJ_mol_nm)
    assert make_loop(tmp_path / "md", parts, oracle=object(), options=options).held_out is None
    with pytest.raises(ValueError, match="held_out_draws"):
        replace(TINY_LOOP, held_out_draws=-1)


def test_prior_draws_need_the_flow_oracle(tmp_path, parts):
    assert make_loop(tmp_path / "initial", parts).prior_cost == {"prior_evaluations": 0, "prior_wall_s": 0.0}  # the initial data serve
    with pytest.raises(ValueError, match="needs the flow oracle"):
        make_loop(tmp_path / "md", parts, oracle=object(), model=replace(TINY_MODEL, prior_draws=10))
    with pytest.raises(ValueError, match="prior_draws"):
        replace(TINY_MODEL, prior_draws=-1)


def test_prior_frames_from_another_run_give_any_oracle_the_same_prior(tmp_path, parts):
    """cg_model.prior_frames: a loop with another oracle (no flow) inverts its prior from a flow run's
    prior_frames.npz, and counts their cost; a file of another mapping's shape is a clear error."""
    flow_loop = make_loop(tmp_path / "flow", parts, model=replace(TINY_MODEL, prior_draws=20))
    frames = tmp_path / "flow" / "prior_frames.npz"
    other = make_loop(tmp_path / "other", parts, oracle=object(), model=replace(TINY_MODEL, prior_frames=str(frames)))
    x = torch.as_tensor(parts[3].cg_positions_nm)
    torch.testing.assert_close(other.prior(x), flow_loop.prior(x))
    assert other.prior_cost == flow_loop.prior_cost and other.prior_cost["prior_evaluations"] == 20
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, cg_positions_nm=np.zeros((20, 4, 3)), n_energy_evaluations=20, wall_s=1.0)
    with pytest.raises(InputError, match="the mapping has"):
        make_loop(tmp_path / "wrong", parts, model=replace(TINY_MODEL, prior_frames=str(wrong)))
    with pytest.raises(ValueError, match="set one"):
        replace(TINY_MODEL, prior_draws=10, prior_frames=str(frames))


def test_bad_strategy_is_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "flowcg.cli.al", "target=aldp_vacuum", "oracle.pretrained=aldp_vacuum",
                             "strategy.name=psychic", f"hydra.run.dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "unknown query strategy 'psychic'" in result.stderr


class FixedFrames:
    """A stand-in evaluation reference: frames only (the loop asks nothing else of it here)."""

    def __init__(self, frames_nm):
        self.frames_nm = frames_nm

    def evaluate(self, frames, backmapper, seed=0, log_weights=None):
        return {}


def test_the_final_run_can_start_from_the_reference(tmp_path, parts):
    """final_start_from, final_n_replicas and final_burn_in_saves change the last round's run alone."""
    mapping, backmapper, oracle, initial = parts
    shifted = initial.cg_positions_nm + 10.0  # the CG model is translation-invariant: only where runs start tells them apart
    options = loop_options(rounds=1, queries_per_round=2, fit=FitOptions(steps=10, batch_size=16), finetune_steps=5)
    simulation = SimulationOptions(n_replicas=4, n_steps=60, save_every=10, burn_in_saves=1, final_start_from="reference",
                                   final_n_replicas=6, final_burn_in_saves=4)
    loop = ActiveLearningLoop(tmp_path, mapping, backmapper, oracle, build_strategy("random"), initial, options, TINY_MODEL,
                              simulation, reference=FixedFrames(shifted))
    loop.run()
    assert [Journal(tmp_path / "journal.json").entry(r, "simulate")["n_replicas"] for r in (0, 1)] == [4, 6]  # only the last is wider
    saved = [np.load(loop.round_dir(r) / "simulation.npz")["frames"].shape[:2] for r in (0, 1)]
    assert saved == [(5, 4), (2, 6)]  # (saves, replicas): 6 saves, 1 or 4 dropped
    centre = initial.cg_positions_nm.mean(axis=(0, 1))
    assert np.all(np.abs(loop.simulated_frames(0).mean(axis=(0, 1)) - centre) < 1.0)
    assert np.all(np.abs(loop.simulated_frames(1).mean(axis=(0, 1)) - centre - 10.0) < 1.0)
    with pytest.raises(ValueError, match="needs an evaluation reference"):
        ActiveLearningLoop(tmp_path / "none", mapping, backmapper, oracle, build_strategy("random"), initial, options,
                           TINY_MODEL, simulation)
    with pytest.raises(ValueError, match="final_start_from"):
        SimulationOptions(final_start_from="anywhere")
    with pytest.raises(ValueError, match="final_burn_in_saves must be >= 0"):
        SimulationOptions(final_burn_in_saves=-1)
    with pytest.raises(ValueError, match="final_burn_in_saves too large"):  # at configuration, before any round runs
        replace(simulation, final_burn_in_saves=6)


def test_the_final_run_can_be_biased_along_the_dihedrals_and_reweighted(tmp_path, parts):
    """simulation.final_bias_factor = γ: the last round's CG MD runs on the model's force minus the
    gradient of V = −(1 − 1/γ) U_dihedral (the label-free prior's dihedral terms) and saves each frame's
    log weight V/kT, which the evaluation applies; earlier rounds stay unbiased and unweighted."""
    mapping, backmapper, oracle, initial = parts
    options = loop_options(rounds=1, queries_per_round=2, fit=FitOptions(steps=10, batch_size=16), finetune_steps=5)
    simulation = replace(TINY_SIMULATION, final_bias_factor=4.0)
    seen = {}

    class WeightsSeen(FixedFrames):
        def evaluate(self, frames, backmapper, seed=0, log_weights=None):
            seen[len(seen)] = log_weights
            return {}

    loop = ActiveLearningLoop(tmp_path, mapping, backmapper, oracle, build_strategy("random"), initial, options, TINY_MODEL,
                              simulation, reference=WeightsSeen(initial.cg_positions_nm))
    loop.run()
    assert seen[0] is None and loop._simulation_record(0)[1] is None
    frames, log_weights = loop._simulation_record(1)
    with torch.no_grad():
        u_dihedral = loop.prior.dihedral_energy(torch.as_tensor(frames, dtype=torch.float64)).numpy()
    kt = 0.0083144626 * loop.options.temperature_K
    np.testing.assert_allclose(log_weights, -0.75 * u_dihedral / kt, rtol=1e-10)
    np.testing.assert_array_equal(seen[1], log_weights)
    assert np.ptp(log_weights) > 0
    # the biased force is −∇(U_model + V)
    (model,) = loop.committee(1)
    x = torch.as_tensor(frames[:5], dtype=model.dtype)
    y = x.double().requires_grad_(True)
    (grad_v,) = torch.autograd.grad((-0.75 * loop.prior.dihedral_energy(y)).sum(), y)
    expected = model.forces(x, create_graph=False) - grad_v.to(model.dtype)
    torch.testing.assert_close(loop._biased(lambda z: model.forces(z, create_graph=False))(x), expected)
    with pytest.raises(ValueError, match="final_bias_factor must be null"):
        SimulationOptions(final_bias_factor=1.0)
    with pytest.raises(ValueError, match="needs cg_model.dihedral_prior"):
        ActiveLearningLoop(tmp_path / "none", mapping, backmapper, oracle, build_strategy("random"), initial, options,
                           replace(TINY_MODEL, dihedral_prior="none"), simulation)


def test_initial_data_from_the_reference_labels_its_frames_with_the_oracle(parts):
    from omegaconf import OmegaConf

    from flowcg.cli.al import initial_labels

    mapping, backmapper, oracle, initial = parts
    reference = FixedFrames(initial.cg_positions_nm[::4])  # 12 frames, one per query of the fixture
    cfg = OmegaConf.create({"seed": 3, "initial": {"source": "reference", "n_frames": 5}})
    labels = initial_labels(cfg, None, mapping, backmapper, oracle, reference)
    assert labels.n_queries == 5 and len(labels) == 5 * oracle.samples_per_query
    query_torsions = backmapper.torsions(labels.cg_positions_nm).numpy()
    reference_torsions = backmapper.torsions(reference.frames_nm).numpy()
    assert all(np.min(np.abs(np.angle(np.exp(1j * (reference_torsions - t)))).sum(1)) < 1e-2 for t in query_torsions)
    with pytest.raises(ValueError, match="exceeds the reference"):
        initial_labels(OmegaConf.create({"seed": 3, "initial": {"source": "reference", "n_frames": 13}}), None, mapping, backmapper, oracle, reference)
    with pytest.raises(ValueError, match="unknown initial.source"):
        initial_labels(OmegaConf.create({"seed": 3, "initial": {"source": "dreams", "n_frames": 5}}), None, mapping, backmapper, oracle, reference)
    with pytest.raises(ValueError, match="needs an evaluation reference"):
        initial_labels(cfg, None, mapping, backmapper, oracle, None)


def test_initial_data_from_the_flow_are_its_draws_resampled_by_weight(parts):
    """initial.source=flow: n one-shot draws, resampled by their importance weights into n
    unweighted rows whose energies and mapped forces are the target's at the kept configurations."""
    from omegaconf import OmegaConf

    from flowcg.cli.al import initial_labels

    mapping, backmapper, oracle, _ = parts
    labels = initial_labels(OmegaConf.create({"seed": 2, "initial": {"source": "flow", "n_frames": 64}}), None, mapping, backmapper, oracle, None)
    assert len(labels) == labels.n_queries == labels.n_energy_evaluations == 64
    np.testing.assert_array_equal(labels.weights, np.ones(64))
    x = torch.as_tensor(labels.positions_nm[:8])
    energy, forces = oracle.target.energy_and_forces(x)
    np.testing.assert_allclose(labels.energies_kJ_mol[:8], energy.numpy(), rtol=0, atol=1e-3)  # float32 force field, other batch
    np.testing.assert_allclose(labels.cg_forces_kJ_mol_nm[:8], mapping.map_forces(forces.numpy()), rtol=1e-4, atol=0.05)
    np.testing.assert_allclose(labels.cg_positions_nm, mapping.map_positions(labels.positions_nm))
    again = oracle.equilibrium(64, seed=2)
    np.testing.assert_array_equal(again.positions_nm, labels.positions_nm)  # seeded
    with pytest.raises(ValueError, match="needs the flow oracle"):
        initial_labels(OmegaConf.create({"seed": 2, "initial": {"source": "flow", "n_frames": 4}}), None, mapping, backmapper, object(), None)
