"""Importance-sampling estimators for samples x ~ q reweighted to p ∝ exp(−βU).

With log weights log w_i = −β u(x_i) − log q(x_i) (u in kT):

* Kish effective sample size, as a fraction: ESS = (Σ w)² / (N Σ w²) ∈ [1/N, 1].
* log Z estimate: log Ẑ = logsumexp(log w) − log N (unbiased in Z, biased low in log Z).
* KL(q‖p) estimate: KL ≈ log mean(w) − mean(log w) (the Jensen gap, ≥ 0).
* Self-normalised expectations: E_p[f] ≈ Σ w f / Σ w.
* Pareto k̂ of the weights' upper tail (:func:`pareto_khat`): whether the weight variance, and so
  the Kish ESS, exists at all. For k̂ > 0.5 it does not, and the ESS of a large sample is set by
  its few largest weights: it scatters between sets and falls as N grows.

Non-finite log weights (a NaN or +inf energy) count as zero weight; callers log how many.
All functions accept numpy arrays or torch tensors of shape (N,) and return Python floats
or numpy arrays, so results go straight into ``metrics.json``.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def as_numpy(values) -> np.ndarray:
    """float64 numpy copy of an array-like or a (detached) torch tensor."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def clean_log_weights(log_w) -> np.ndarray:
    """Log weights with NaN and +inf mapped to −inf (zero weight)."""
    log_w = as_numpy(log_w).copy()
    log_w[~np.isfinite(log_w)] = -np.inf
    return log_w


def normalized_weights(log_w) -> np.ndarray:
    """Self-normalised weights w_i / Σ w (sum to 1; zeros for non-finite log weights)."""
    log_w = clean_log_weights(log_w)
    finite = np.isfinite(log_w)
    if not finite.any():
        return np.zeros_like(log_w)
    shifted = np.where(finite, np.exp(log_w - log_w[finite].max()), 0.0)
    return shifted / shifted.sum()


def systematic_resample(log_w, n: int, seed: int = 0) -> np.ndarray:
    """Indices (n,) of draws picked with probability ∝ w by systematic resampling: one uniform
    offset u, picks at the quantiles (u + j) / n of the cumulative weights. The picked draws are an
    unweighted sample of p (repeats where one weight outweighs 1/n); of all unbiased resamplers
    this one keeps the most distinct draws.

    >>> systematic_resample(np.log([0.1, 0.6, 0.3]), 10).tolist()
    [0, 1, 1, 1, 1, 1, 1, 2, 2, 2]
    """
    cumulative = np.cumsum(normalized_weights(log_w))
    if cumulative.size == 0 or cumulative[-1] <= 0:
        raise ValueError("no draw has a finite weight: nothing to resample")
    offsets = (np.random.default_rng(seed).uniform() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cumulative, offsets), len(cumulative) - 1)


def truncated_weights(log_w) -> np.ndarray:
    """Truncated importance weights, normalised: w̃_i = min(w_i, c) with c = √N · mean(w̃).

    Ionides' (2008) truncated importance sampling caps the weights at √N times their mean; here the
    cap is the fixed point of that rule (√N times the mean of the *truncated* weights), so that
    even one draw that holds nearly all the self-normalised mass ends with a share of 1/√N at most.
    With k draws capped, c = (sum of the others) / (√N − k); the smallest consistent k is found on
    the sorted weights. The bias vanishes as N grows. Zeros for non-finite log weights; weights
    that are all below the cap are returned unchanged.
    """
    w = normalized_weights(log_w)
    root_n = math.sqrt(int(np.isfinite(clean_log_weights(log_w)).sum()))
    if root_n == 0:
        return w
    descending = np.sort(w)[::-1]
    k = np.arange(math.ceil(root_n))  # fewer than √N draws can exceed √N times the mean
    rest = np.cumsum(descending[::-1])[::-1][k]  # mass outside the top k, summed from the small end
    cap = rest / (root_n - k)
    consistent = (descending[k] <= cap) & ((k == 0) | (descending[np.maximum(k - 1, 0)] >= cap))
    truncated = np.minimum(w, cap[np.argmax(consistent)])
    return truncated / truncated.sum()


def kish_ess(log_w, clip_fraction: float = 0.0) -> float:
    """Kish effective sample size as a fraction of N, (Σ w)² / (N Σ w²).

    Args:
        log_w: log importance weights, shape (N,).
        clip_fraction: if > 0, the largest ``ceil(clip_fraction · N)`` weights are clipped to the
            smallest of them first (TA-BG's variant with clip_fraction = 1e-4).
    """
    log_w = clean_log_weights(log_w)
    n = log_w.size
    if n == 0:
        raise ValueError("kish_ess needs at least one weight")
    if clip_fraction > 0:
        k = max(1, math.ceil(clip_fraction * n))
        threshold = np.sort(log_w)[-k]
        log_w = np.minimum(log_w, threshold)
    w = normalized_weights(log_w)
    if not w.any():
        return 0.0
    return float(1.0 / (n * np.sum(w**2)))


#: fewest finite weights :func:`pareto_khat` fits a tail to
PARETO_MIN_WEIGHTS = 25


def pareto_khat(log_w) -> float:
    """Shape k̂ of a generalized Pareto distribution fitted to the largest weights (PSIS diagnostic).

    The tail is the M = min(N/5, 3√N) largest weights above the next one (Vehtari, Simpson,
    Gelman, Yao & Gabry, "Pareto smoothed importance sampling", JMLR 25 (2024)); k is fitted by
    the empirical-Bayes estimate of Zhang & Stephens (Technometrics 51 (2009)), with their weak
    prior shrinking k towards 0.5 over 10 pseudo-observations, as PSIS does. k̂ < 0.5: the weights
    have a finite variance; 0.5–0.7: finite mean, the Kish ESS is unstable; > 0.7: importance
    sampling is unreliable. Written here because the usual implementations live in Bayesian
    workflow packages (ArviZ, loo) that flowcg does not otherwise need. Needs N ≥ ``PARETO_MIN_WEIGHTS`` finite weights.

    >>> rng = np.random.default_rng(0)
    >>> round(pareto_khat(np.log(rng.pareto(1 / 0.7, 200_000) + 1.0)), 1)  # a Pareto tail of index 0.7
    0.7
    >>> pareto_khat(rng.normal(0.0, 0.1, 100_000)) < 0.2  # log-normal weights of small spread
    True
    """
    log_w = clean_log_weights(log_w)
    finite = np.sort(log_w[np.isfinite(log_w)])
    n = finite.size
    if n < PARETO_MIN_WEIGHTS:
        raise ValueError(f"pareto_khat needs at least {PARETO_MIN_WEIGHTS} finite weights, got {n}")
    m = int(min(0.2 * n, 3.0 * math.sqrt(n)))
    w = np.exp(finite - finite[-1])
    exceedances = w[-m:] - w[-m - 1]
    if exceedances[-1] <= 0.0:
        return 0.0  # equal weights: no tail
    # Zhang & Stephens: a grid of θ = −k/σ values, weighted by their profile likelihood
    grid = 30 + int(math.sqrt(m))
    theta = 1.0 / exceedances[-1] + (1.0 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))) / (3.0 * exceedances[int(m / 4 + 0.5) - 1])
    k_grid = np.log1p(-theta[:, None] * exceedances).mean(axis=1)
    profile = m * (np.log(-theta / k_grid) - k_grid - 1.0)
    posterior = np.exp(profile - profile.max())  # ∝ the profile likelihood, normalised below
    theta_mean = np.sum(theta * posterior) / posterior.sum()
    k = np.log1p(-theta_mean * exceedances).mean()
    return float((m * k + 10 * 0.5) / (m + 10))


def log_z_estimate(log_w) -> float:
    """log Ẑ = log mean_i w_i; −inf if every weight is zero."""
    log_w = clean_log_weights(log_w)
    finite = np.isfinite(log_w)
    if not finite.any():
        return float("-inf")
    m = log_w[finite].max()
    return float(m + np.log(np.sum(np.exp(log_w[finite] - m))) - np.log(log_w.size))


def kl_estimate(log_w) -> float:
    """KL(q‖p_β) ≈ log mean(w) − mean(log w) over the finite weights (≥ 0 by Jensen)."""
    log_w = clean_log_weights(log_w)
    finite = log_w[np.isfinite(log_w)]
    if finite.size == 0:
        return float("inf")
    m = finite.max()
    return float(m + np.log(np.mean(np.exp(finite - m))) - finite.mean())


def reweighted_mean(values, log_w) -> np.ndarray:
    """Self-normalised importance-sampling estimate of E_p[f] from f(x_i) of shape (N, ...)."""
    w = normalized_weights(log_w)
    values = as_numpy(values)
    return np.tensordot(w, values, axes=(0, 0))


def tempering_exponent(log_w, min_ess: float, tolerance: float = 1e-3) -> float:
    """The largest α in [0, 1] whose tempered weights w^α keep a Kish ESS of at least ``min_ess``.

    Reweighting draws of q by w^α = (p/q)^α represents q^(1−α) p^α, a step of size α from q toward p
    in log density, with Var(log w^α) = α² Var(log w): when the full weights are too spread to fit
    anything (ESS ≈ 1e-3), a partial step still has ``min_ess`` of the draws behind it. α = 1 when
    the full weights already reach ``min_ess``; found by bisection, since the ESS falls as α grows
    (for ``tolerance`` in α). As in adaptive SMC tempering (Jasra et al. 2011), where the next
    temperature is the one that keeps a set ESS.

    >>> round(tempering_exponent(np.array([0.0, 0.0, 50.0]), min_ess=0.5), 2)
    0.04
    >>> tempering_exponent(np.zeros(4), min_ess=0.5)
    1.0
    """
    log_w = clean_log_weights(log_w)
    if not 0.0 < min_ess <= 1.0:
        raise ValueError(f"min_ess must be in (0, 1], got {min_ess}")
    if kish_ess(log_w) >= min_ess:
        return 1.0
    low, high = 0.0, 1.0
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if kish_ess(middle * log_w) >= min_ess else (low, middle)
    return low
