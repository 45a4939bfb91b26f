"""The trainer: exact resume after a kill, robustness to NaN energies, and a short training that
lands mass in both wells of the double well."""

import pytest
import torch

from flowcg.flows import build_flow
from flowcg.targets import load_target
from flowcg.targets.synthetic import DoubleWell
from flowcg.training import TrainConfig, Trainer, build_schedule
from flowcg.errors import ConfigError, MissingFileError
from tests.training.conftest import Killed, KillableDoubleWell

SMALL = dict(batch_size=64, steps_per_stage=6, final_steps=10, eval_batch_size=128, checkpoint_every=5, show_progress=False)


def _trainer(target, run_dir):
    torch.manual_seed(0)
    model = build_flow(2, 1, 2, n_couplings=2, hidden=16, prior_init_spread=2.0)
    schedule = build_schedule("geometric", beta0=0.1, n_stages=3)
    return Trainer(model, target, schedule, TrainConfig(**SMALL), run_dir)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    reference = _trainer(KillableDoubleWell(), tmp_path / "a")
    reference.fit()

    killed = _trainer(KillableDoubleWell(kill_after_calls=17), tmp_path / "b")
    with pytest.raises(Killed):
        killed.fit()
    assert killed.checkpoint_path.is_file()

    resumed = _trainer(KillableDoubleWell(), tmp_path / "b")
    state = resumed.fit(resume=True)
    assert state["step"] == reference.state["step"] and state["done"]
    for p, q in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert resumed.target.n_energy_evaluations == reference.target.n_energy_evaluations
    assert [r["beta"] for r in state["stages"]] == [r["beta"] for r in reference.state["stages"]]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="no checkpoint"):
        _trainer(DoubleWell(), tmp_path).fit(resume=True)


class SometimesNaN(DoubleWell):
    """Returns NaN / +inf energies for a fraction of samples, and all-NaN batches now and then."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _reduced_energy(self, x):
        self.calls += 1
        u = super()._reduced_energy(x)
        if self.calls % 7 == 0:
            return torch.full_like(u, float("nan"))
        bad = torch.arange(len(u), device=u.device) % 5 == 0
        return torch.where(bad, torch.where(x[:, 0] > 0, torch.inf, torch.nan), u)


def test_nan_energies_are_handled_not_fatal(tmp_path):
    trainer = _trainer(SometimesNaN(), tmp_path)
    state = trainer.fit()
    assert state["done"]
    assert state["nonfinite_energies"] > 0 and state["skipped_steps"] > 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_short_training_lands_mass_in_both_wells(tmp_path):
    torch.manual_seed(1)
    target = load_target("double_well")
    model = build_flow(2, 1, 2, n_couplings=2, hidden=32, prior_init_spread=2.0)
    config = TrainConfig(batch_size=256, lr=1e-3, steps_per_stage=25, final_steps=300, eval_batch_size=512, show_progress=False, checkpoint_every=1000)
    Trainer(model, target, build_schedule("adaptive", beta0=0.01, delta=0.1, kl_floor=1.0), config, tmp_path).fit()
    draw = model.sample(20_000)
    left = float((draw.x[:, 0] < 0).float().mean())
    exact_left = target.x1_mass(-6.0, 0.0)  # ≈ 0.9917
    assert 0.95 < left < 0.9995  # both wells hold mass
    log_w = (-target.energy(draw.x) - draw.log_q).double()
    w = torch.softmax(log_w, 0)
    assert abs(float((w * (draw.x[:, 0] < 0)).sum()) - exact_left) < 0.01
    assert float(1 / (len(w) * (w**2).sum())) > 0.8  # Kish ESS


def test_conditioner_dtype_is_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match="conditioner_dtype"):
        TrainConfig(**SMALL, conditioner_dtype="float16")
    model = build_flow(2, 1, 2, n_couplings=2, hidden=16)
    with pytest.raises(ConfigError, match="train.conditioner_dtype=bfloat16: .*model.kind=internal"):
        Trainer(model, DoubleWell(), build_schedule("constant"), TrainConfig(**SMALL, conditioner_dtype="bfloat16"), tmp_path)
