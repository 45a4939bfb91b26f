"""Tempering schedules: monotone, and the last stage is at β = 1."""

import numpy as np
import pytest

from flowcg.training import build_schedule


def _run(schedule, energies, log_q, max_stages=10_000):
    betas = [schedule.initial_beta]
    while betas[-1] < 1.0 and len(betas) < max_stages:
        betas.append(schedule.next_beta(betas[-1], energies, log_q))
    return np.array(betas)


@pytest.mark.parametrize(
    "kind, options",
    [("constant", {}), ("linear", {"beta0": 0.01, "n_stages": 7}), ("geometric", {"beta0": 1e-4, "n_stages": 9}), ("adaptive", {"beta0": 1e-3, "delta": 0.1})],
)
def test_schedules_are_monotone_and_end_at_one(kind, options):
    rng = np.random.default_rng(0)
    energies = rng.normal(20.0, 5.0, 2048)  # the stage samples the schedule sees
    log_q = rng.normal(-3.0, 1.0, 2048)
    betas = _run(build_schedule(kind, **options), energies, log_q)
    assert betas[-1] == 1.0
    assert np.all(np.diff(betas) > 0)
    assert betas[0] == (1.0 if kind == "constant" else options["beta0"])


def test_fixed_schedules_hit_their_grid():
    assert np.allclose(_run(build_schedule("linear", beta0=0.2, n_stages=5), None, None), [0.2, 0.4, 0.6, 0.8, 1.0])
    assert np.allclose(_run(build_schedule("geometric", beta0=0.01, n_stages=3), None, None), [0.01, 0.1, 1.0])


def test_adaptive_step_respects_delta_and_shrinks_for_wider_energy_spread():
    rng = np.random.default_rng(1)
    schedule = build_schedule("adaptive", beta0=0.01, delta=0.1, kl_floor=1.0)
    log_q = np.zeros(4096)
    narrow, wide = rng.normal(0, 10, 4096), rng.normal(0, 100, 4096)
    step_narrow = schedule.next_beta(0.01, narrow, log_q) - 0.01
    step_wide = schedule.next_beta(0.01, wide, log_q) - 0.01
    assert 0 < step_wide < step_narrow
    accepted = 0.01 + step_wide
    assert schedule.relative_kl_increase(0.01, accepted, wide, log_q) <= 0.1


def test_bad_schedule_options():
    with pytest.raises(ValueError, match="unknown tempering schedule"):
        build_schedule("cosine")
    with pytest.raises(ValueError, match="beta0"):
        build_schedule("linear", beta0=0.0, n_stages=3)
    with pytest.raises(ValueError, match="shrink"):
        build_schedule("adaptive", beta0=0.1, shrink=1.5)
