"""Metrics against the exact answers of the synthetic targets.

* double well: mass at x1 < 0 (reweighted and raw model vs exact), histogram KL of the x1
  marginal against the exact one (100 bins on [−5, 5], exact bin masses by quadrature), and
  the CV check |Spearman rank correlation(z_slow, x1)| (the flow is nonlinear, so a monotone
  relation, not a linear one, is what "z_slow encodes x1" means).
* mixtures: mode weights (each sample goes to its most probable component; raw model and
  reweighted vs exact), ``modes_found`` (a mode counts when the raw model puts ≥ 20 % of its
  exact weight on it), and the CV check R²: the fraction of the slow block's variance that a
  linear map of z_slow explains.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from flowcg.analysis.histograms import kl_divergence
from flowcg.sampling.importance import normalized_weights
from flowcg.sampling.sampler import SampleSet
from flowcg.targets.base import Target
from flowcg.targets.synthetic import DoubleWell, GaussianMixture, SlowFastGaussianMixture

X1_BINS = np.linspace(-5.0, 5.0, 101)
MODE_FOUND_FRACTION = 0.2


def linear_r2(features: np.ndarray, responses: np.ndarray) -> float:
    """R² of the least-squares fit responses ≈ [features, 1] A, pooled over response columns."""
    design = np.column_stack([features, np.ones(len(features))])
    coef, *_ = np.linalg.lstsq(design, responses, rcond=None)
    residual = responses - design @ coef
    return float(1.0 - residual.var(axis=0).sum() / responses.var(axis=0).sum())


def double_well_metrics(target: DoubleWell, samples: SampleSet) -> dict:
    x1 = samples.x[:, 0]
    w = normalized_weights(samples.log_w)
    exact_bins = np.array([target.x1_mass(lo, hi) for lo, hi in zip(X1_BINS[:-1], X1_BINS[1:])])
    model_bins, _ = np.histogram(x1, bins=X1_BINS)
    reweighted_bins, _ = np.histogram(x1, bins=X1_BINS, weights=w)
    corr = [abs(spearmanr(samples.z_slow[:, j], x1).statistic) for j in range(samples.z_slow.shape[1])]
    mass_left_exact = target.x1_mass(target.x1_range[0], 0.0)
    mass_left = float(np.sum(w * (x1 < 0)))
    return {
        "mass_left": mass_left,
        "mass_left_model": float(np.mean(x1 < 0)),
        "mass_left_exact": mass_left_exact,
        "mass_left_error": abs(mass_left - mass_left_exact),
        "kl_x1": kl_divergence(exact_bins, model_bins),
        "kl_x1_reweighted": kl_divergence(exact_bins, reweighted_bins),
        "cv_corr_x1": float(max(corr)),
    }


def mixture_metrics(target: GaussianMixture | SlowFastGaussianMixture, samples: SampleSet) -> dict:
    x = torch.as_tensor(samples.x, dtype=torch.float64)
    modes = target.double().assign_modes(x).numpy()
    exact = target.weights.detach().cpu().double().numpy()
    model = np.bincount(modes, minlength=target.n_modes) / len(modes)
    reweighted = np.bincount(modes, weights=normalized_weights(samples.log_w), minlength=target.n_modes)
    slow_dim = getattr(target, "slow_dim", target.dim)
    return {
        "n_modes": int(target.n_modes),
        "modes_found": int(np.sum(model >= MODE_FOUND_FRACTION * exact)),
        "mode_weights": reweighted.tolist(),
        "mode_weights_model": model.tolist(),
        "mode_weights_exact": exact.tolist(),
        "max_mode_weight_error": float(np.max(np.abs(reweighted - exact))),
        "cv_r2_slow": linear_r2(samples.z_slow, samples.x[:, :slow_dim]),
    }


EVALUATORS = {DoubleWell: double_well_metrics, GaussianMixture: mixture_metrics, SlowFastGaussianMixture: mixture_metrics}


def target_metrics(target: Target, samples: SampleSet) -> dict:
    """Target-specific metrics for the synthetic targets ({} for targets without exact answers)."""
    for kind, evaluate in EVALUATORS.items():
        if isinstance(target, kind):
            return evaluate(target, samples)
    return {}
