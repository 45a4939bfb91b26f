import math

import numpy as np
import pytest
import torch

from flowcg.md.torsion_bias import TorsionBias


def wrapped_hill(phi, psi, centre, height, width):
    """Σ over periodic images of h exp(−|Δ|² / 2σ²), the hill the Fourier series must reproduce."""
    total = 0.0
    for n in range(-2, 3):
        for m in range(-2, 3):
            d2 = (phi - centre[0] + 2 * math.pi * n) ** 2 + (psi - centre[1] + 2 * math.pi * m) ** 2
            total = total + height * np.exp(-d2 / (2 * width**2))
    return total


def test_fourier_hills_match_wrapped_gaussians_across_the_seam():
    bias = TorsionBias.zeros(order=14)
    centres, heights, width = [(3.0, -1.0), (-2.9, 3.1)], [2.0, 0.7], 0.35
    bias.add_hills(torch.tensor([c[0] for c in centres]), torch.tensor([c[1] for c in centres]), torch.tensor(heights), width)
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-math.pi, math.pi, (2, 500))
    phi[:3], psi[:3] = [3.0, -2.9, math.pi], [-1.0, 3.1, -math.pi]  # the peaks and a point on the seam
    expected = sum(wrapped_hill(phi, psi, c, h, width) for c, h in zip(centres, heights))
    values = bias(torch.as_tensor(phi), torch.as_tensor(psi)).numpy()
    np.testing.assert_allclose(values, expected, atol=1e-4)


def test_bias_is_periodic_and_reloads(tmp_path):
    bias = TorsionBias.zeros(order=4)
    bias.add_hills(torch.tensor([0.5]), torch.tensor([-2.0]), torch.tensor([1.0]), 0.6)
    phi, psi = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([2.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(bias(phi + 2 * math.pi, psi - 2 * math.pi), bias(phi, psi))
    bias.save(tmp_path / "bias.npy")
    torch.testing.assert_close(TorsionBias.load(tmp_path / "bias.npy")(phi, psi), bias(phi, psi))
    assert bias.grid(8).shape == (8, 8)


def test_bad_coefficients_and_missing_file_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"\(2K\+1, 2K\+1\)"):
        TorsionBias(np.zeros((4, 4)))
    with pytest.raises(FileNotFoundError, match="torsion bias not found"):
        TorsionBias.load(tmp_path / "none.npy")
