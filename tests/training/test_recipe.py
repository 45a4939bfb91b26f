"""Training recipes: phases from the config, validated up front, and one chain that resumes
exactly after a kill in any phase (train or refit)."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from flowcg.errors import ConfigError
from flowcg.flows import build_flow
from flowcg.training.recipe import build_phases, run_recipe
from flowcg.training.trainer import CHECKPOINT_NAME
from tests.training.conftest import Killed, KillableDoubleWell
from tests.training.test_trainer import SMALL

TRAIN = {**SMALL, "schedule": {"kind": "geometric", "beta0": 0.1, "n_stages": 3}}
REFIT = {"n_components": 0, "n_samples": 2000, "rounds": 1, "n_iter": 50, "min_std": 0.05, "batch_size": 1000, "uniform_fraction": 0.0}
RECIPE = [
    {"kind": "train"},
    {"kind": "refit", "n_components": 3},
    {"kind": "train", "schedule": {"kind": "constant"}, "final_steps": 12, "lr": 3e-4},
]


def _model():
    torch.manual_seed(0)
    return build_flow(2, 1, 2, n_couplings=2, hidden=16, prior_init_spread=2.0)


def test_phases_take_the_run_settings_with_their_own_on_top():
    phases = build_phases(RECIPE, TRAIN, REFIT)
    assert [p.kind for p in phases] == ["train", "refit", "train"]
    assert phases[0].settings == TRAIN
    assert phases[1].settings["n_components"] == 3 and phases[1].settings["n_samples"] == 2000
    assert phases[2].settings["schedule"] == {"kind": "constant"} and phases[2].settings["final_steps"] == 12
    assert phases[2].settings["batch_size"] == TRAIN["batch_size"]
    # the empty recipe is the plain run: train, then a refit only when one is configured
    assert [p.kind for p in build_phases([], TRAIN, REFIT)] == ["train"]
    assert [p.kind for p in build_phases(None, TRAIN, {**REFIT, "n_components": 4})] == ["train", "refit"]


@pytest.mark.parametrize("recipe, message", [
    ([{"kind": "anneal"}], "kind must be one of train, refit"),
    ([{"kind": "train"}, {"kind": "refit"}], "a refit needs n_components > 0"),
    ([{"kind": "train", "lr_typo": 1.0}], "lr_typo"),
    ([{"kind": "refit", "n_components": 2}], "starts with a train phase"),
])
def test_a_bad_recipe_fails_before_training(recipe, message):
    with pytest.raises(ConfigError, match=message):
        build_phases(recipe, TRAIN, REFIT)


@pytest.mark.parametrize("kill_after_calls", [17, 26, 33])  # in phase 0 (25 calls), in the refit (2), in phase 2
def test_killed_and_resumed_recipe_equals_uninterrupted_one(tmp_path, kill_after_calls):
    phases = build_phases(RECIPE, TRAIN, REFIT)
    reference_model, reference_target = _model(), KillableDoubleWell()
    reference = run_recipe(reference_model, reference_target, phases, tmp_path / "a", seed=0)
    assert [p["kind"] for p in reference.phases] == ["train", "refit", "train"]
    assert reference_model.latent.slow.n_components == 3
    assert (tmp_path / "a" / CHECKPOINT_NAME).is_file() and (tmp_path / "a" / "phase2" / CHECKPOINT_NAME).is_file()

    with pytest.raises(Killed):
        run_recipe(_model(), KillableDoubleWell(kill_after_calls=kill_after_calls), phases, tmp_path / "b", seed=0)
    model, target = _model(), KillableDoubleWell()
    resumed = run_recipe(model, target, phases, tmp_path / "b", seed=0, resume=True)
    assert model.latent.slow.n_components == 3
    for p, q in zip(reference_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(p, q)
    assert target.n_energy_evaluations == reference_target.n_energy_evaluations
    assert resumed.history()["curve"] == reference.history()["curve"]


@pytest.mark.parametrize("recipe_file", sorted((Path(__file__).resolve().parents[2] / "conf" / "recipe").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_every_shipped_recipe_validates_against_the_shipped_defaults(recipe_file):
    conf = recipe_file.parents[1]
    train = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(conf / "train" / "default.yaml")).items() if k != "defaults"}
    train["schedule"] = OmegaConf.to_container(OmegaConf.load(conf / "train" / "schedule" / "aldp_geometric.yaml"))
    refit = OmegaConf.to_container(OmegaConf.load(conf / "train.yaml").prior_refit)
    phases = build_phases(OmegaConf.to_container(OmegaConf.load(recipe_file).phases), train, refit)
    assert phases[0].kind == "train"


def _product_model():
    """Both double-well coordinates slow, with a product prior (one mixture per coordinate)."""
    from flowcg.latent import BlockMixture

    torch.manual_seed(0)
    model = build_flow(2, 2, 2, n_couplings=2, hidden=16)
    model.latent.slow = BlockMixture([[0], [1]], n_components=2, init_spread=2.0, seed=0)
    return model


@pytest.mark.parametrize("kill_after_calls", [26, 33])  # in the refit, in the train phase after it
def test_a_refit_that_joins_the_slow_blocks_resumes_exactly(tmp_path, kill_after_calls):
    """prior_refit.slow_blocks = joint replaces the product by one mixture; a resumed chain rebuilds
    that form from its state (match_slow_prior) and ends with the uninterrupted run's parameters."""
    from flowcg.latent import DiagonalGaussianMixture

    recipe = [{"kind": "train"}, {"kind": "refit", "n_components": 3, "slow_blocks": "joint", "per_state_draws": 4},
              {"kind": "train", "schedule": {"kind": "constant"}, "final_steps": 12, "lr": 3e-4}]
    phases = build_phases(recipe, TRAIN, REFIT)
    reference_model = _product_model()
    run_recipe(reference_model, KillableDoubleWell(), phases, tmp_path / "a", seed=0)
    assert isinstance(reference_model.latent.slow, DiagonalGaussianMixture) and reference_model.latent.slow.n_components == 3
    with pytest.raises(Killed):
        run_recipe(_product_model(), KillableDoubleWell(kill_after_calls=kill_after_calls), phases, tmp_path / "b", seed=0)
    model = _product_model()
    run_recipe(model, KillableDoubleWell(), phases, tmp_path / "b", seed=0, resume=True)
    assert reference_model.state_dict().keys() == model.state_dict().keys()
    for p, q in zip(reference_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(p, q)


def test_a_run_reloads_with_the_slow_prior_its_last_refit_left():
    from flowcg.builders import final_slow_prior

    cfg = OmegaConf.create({"model": {"n_components": 6, "slow_blocks": "bonded"}, "train": TRAIN, "prior_refit": REFIT,
                            "recipe": {"phases": [{"kind": "train"}, {"kind": "refit", "n_components": 12}]}})
    assert final_slow_prior(cfg) == (12, "bonded")
    cfg.recipe.phases.append({"kind": "refit", "n_components": 32, "slow_blocks": "joint"})
    assert final_slow_prior(cfg) == (32, "joint")
    cfg.recipe.phases = [{"kind": "train"}]
    assert final_slow_prior(cfg) == (6, "bonded")
