"""Shared fixtures of the molecular-target tests: the three presets and a few thermal frames each."""

import numpy as np
import pytest

from flowcg.targets.systems import PRESETS, langevin_frames, load_system


@pytest.fixture(scope="session", params=sorted(PRESETS))
def preset_frames(request):
    """(MolecularSystem, frames (7, 22, 3) nm): 5 short-MD frames + 2 strongly perturbed ones."""
    ms = load_system(request.param)
    frames = langevin_frames(ms, n_frames=5, steps_per_frame=50, seed=1)
    rng = np.random.default_rng(2)
    perturbed = frames[:2] + 0.01 * rng.standard_normal(frames[:2].shape)
    return ms, np.concatenate([frames, perturbed])
