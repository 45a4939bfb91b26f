"""Importance-weighted refit of the slow prior: give the model the target's slow marginal.

The model is q(x) = π(s) q(x | s) with s = z_slow (the CVs; for alanine dipeptide φ, ψ) and π the
slow mixture prior. Keeping the conditional q(x | s) fixed, the slow prior that minimises the
forward KL(p ‖ q) is p's own marginal over s,

    p(s) ∝ π(s) E_{q(x|s)}[w(x)],   w(x) = exp(−βu(x)) / q(x),

which self-normalised importance weights estimate from the model's own iid draws (s_i, w_i): a
weighted sample of p(s). The weights are truncated at √N times their mean (Ionides 2008,
:func:`~flowcg.sampling.importance.truncated_weights`): one draw deep in the tail of w can
otherwise hold most of the mass (on the shipped alanine-dipeptide model one set of 100 000 draws
had a Kish ESS of 0.045 against ≈ 0.3–0.4 for others) and the fit would spend a component on it.
:meth:`~flowcg.latent.mixture.DiagonalGaussianMixture.fit_weighted` fits a new mixture, with as
many components as asked (more than reverse-KL training can place well), to it by EM, and the new
mixture replaces π. Further rounds draw from the refit model, whose weights
are less spread, and fit again. Reverse KL at β = 1 can then polish everything together
(``flowcg-train init_from=...``).

Why it helps: reverse KL spreads its effort by q's own mass and a handful of mixture components
cannot follow the curved basins of a Ramachandran map, so a trained model keeps a basin-level
error in π that shows up as between-basin spread of log w. On the continued alanine-dipeptide
flagship, bins of 8 × 8 over (φ, ψ) carried 31% of the variance of log w; a 24-component refit in
two rounds of 100 000 draws took its Kish ESS from 0.31 to 0.66 (``data_free_benchmarks/RESULTS.md``).
It is data-free: only the model and the energy are used, and every draw counts in the target's
energy evaluations.

The same mechanism on every target. The weight that reverse KL gives a minor mode is the weak
spot everywhere, not only on alanine dipeptide: the double well's minor well at 0.1× its mass, a
few of gmm40's 40 modes at 1–20 % of theirs (seed 1: five modes under the 20 % mark, 35/40 found,
ESS 0.09). The gradient of reverse KL on a mode's weight is proportional to the mass the model
already puts there, so a starved mode recovers slowly; the importance-weighted fit sets every
weight from the target in one step, as long as the model draws the mode at all (on gmm40 the
least-visited mode still had 30 of 10⁵ draws). The experiments ``double_well``, ``gmm20`` and
``gmm40`` therefore end with two refit rounds as ``aldp_implicit`` does (gmm40 seed 1: 40/40
modes, ESS 0.91; ``data_free_benchmarks/RESULTS.md``).

Defensive proposal (``uniform_fraction`` f > 0, periodic slow latents). Draws from π alone put
≈ 0.2 % of alanine dipeptide's samples in αL if π underweights it, too few to correct it. With f,
a share of the draws take s uniform on the torus and x ~ q(x | s), so every draw comes from the
mixture q_r(x) = r(s) q(x | s), r = (1 − f) π + f U, and carries the weight exp(−βu) / q_r(x),
log q_r(x) = log q(x) − log π(s) + log r(s): a weighted sample of p(s) that covers every basin.

Tempered refit (``min_ess`` > 0). On a peptide the full weights can be too spread to fit from: the
tetrapeptide after tempered training has Var(log w) ≈ 11 and a Kish ESS of 0.001–0.005 on 5·10⁴
draws, although q(x | s) at a fixed s has Var(log w | s) ≈ 2–3; most of the spread is between
slow states, which is what a refit corrects, but ~50 effective draws cannot place 3 × K
components. The refit then fits the weights w^α instead, α the largest that keeps a Kish ESS of
``min_ess`` (:func:`~flowcg.sampling.importance.tempering_exponent`): a weighted sample of
q^(1−α) p^α, so the slow prior moves a share α of the way (in log density) toward p's marginal,
and the next round, drawing from the refit model, moves further with a larger α. At the fixed
point E_q(x|s)[w^α] is constant over s: π(s) ∝ p(s) (E[ρ^α | s])^(1/α), ρ = p(x | s)/q(x | s),
which is p(s) where q(x | s) is equally good everywhere and approaches it as α → 1.

Per-state weights (``per_state_draws`` M > 1). The tempered refit stops short of p(s) because one
draw's weight carries the conditional error too. Drawing M configurations x_j ~ q(x | s) at each
of n_samples / M states s and weighting the state by the mean W(s) = (1/M) Σ_j w(x_j) averages
that error out: E[W(s)] ∝ p(s)/π(s) exactly, and its spread over states is the slow prior's error
alone, so the refit can take the full step (α = 1). On trained tetrapeptide models (M = 16) the
states' Kish ESS was 0.14–0.30 where single draws of the same models have 0.02–0.06
(``data_free_benchmarks/RESULTS.md``, "A joint slow refit on per-state weights"); ``min_ess`` still
tempers the states' weights where they are too spread (the hexapeptide's: 0.004).

Joint refit (``slow_blocks: joint``). A product of per-residue mixtures (``model.slow_blocks:
bonded``) trains well but its best fit to p(s) is the product of p's marginals (module
:mod:`flowcg.latent.product`): the residues' correlations stay in log w. The joint refit fits one
mixture over all slow latents instead (:meth:`~flowcg.latent.structured.StructuredLatent.join_slow_`);
a run whose recipe joins reloads as a joint model (:func:`flowcg.builders.final_slow_prior`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp

from flowcg.errors import ConfigError
from flowcg.flows.model import StructuredFlow
from flowcg.sampling import draw_samples, kish_ess, tempering_exponent, truncated_weights
from flowcg.sampling.importance import clean_log_weights
from flowcg.targets.base import Target

log = logging.getLogger(__name__)


#: ``prior_refit.slow_blocks``: null keeps the model's slow prior (a joint mixture or a product of blocks); joint
#: replaces a product by one mixture over all slow latents, which can hold the blocks' correlations
REFIT_SLOW_BLOCKS = (None, "joint")


@dataclass
class PriorRefitConfig:
    """``prior_refit`` in ``conf/train.yaml``; ``n_components = 0`` turns the refit off."""

    n_components: int = 0
    n_samples: int = 100_000
    rounds: int = 1
    n_iter: int = 300
    min_std: float = 0.05  # rad for wrapped components
    batch_size: int = 10_000
    uniform_fraction: float = 0.0  # defensive share of draws with the slow state uniform on the torus
    min_ess: float = 0.0  # > 0: fit to the tempered weights w^α, α ≤ 1 the largest that keeps this Kish ESS (module docstring)
    per_state_draws: int = 1  # > 1: n_samples / this slow states, each weighted by the mean weight of this many draws of q(x | s)
    slow_blocks: str | None = None  # joint: refit one mixture over all slow latents, replacing a product of block mixtures; null: keep

    def __post_init__(self):
        if self.n_components < 0:
            raise ConfigError(f"prior_refit.n_components must be ≥ 0 (0 = off), got {self.n_components}")
        for name in ("n_samples", "rounds", "n_iter", "batch_size", "per_state_draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prior_refit.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.min_std <= 0:
            raise ConfigError(f"prior_refit.min_std must be > 0, got {self.min_std}")
        if not 0.0 <= self.uniform_fraction < 1.0:
            raise ConfigError(f"prior_refit.uniform_fraction must be in [0, 1), got {self.uniform_fraction}")
        if not 0.0 <= self.min_ess <= 1.0:
            raise ConfigError(f"prior_refit.min_ess must be in [0, 1] (0 = the full weights), got {self.min_ess}")
        if self.slow_blocks not in REFIT_SLOW_BLOCKS:
            raise ConfigError(f"prior_refit.slow_blocks must be null (keep the model's) or joint, got {self.slow_blocks!r}")
        if self.n_samples < self.per_state_draws:
            raise ConfigError(f"prior_refit.n_samples ({self.n_samples}) must be at least per_state_draws ({self.per_state_draws})")

    @property
    def enabled(self) -> bool:
        return self.n_components > 0


def refit_slow_prior(model: StructuredFlow, target: Target, config: PriorRefitConfig, seed: int = 0) -> list[dict]:
    """Refit ``model.latent.slow`` in place as a ``config.n_components``-mixture fitted to importance-
    weighted draws of the model at β = 1, ``config.rounds`` times; returns one record per round (the
    ESS of the draws it fitted, the EM's iterations and weighted log-likelihood)."""
    if not config.enabled:
        raise ConfigError("prior_refit.n_components is 0: nothing to refit")
    records = []
    for round_index in range(config.rounds):
        z_slow, log_w = (_defensive_draws if config.per_state_draws == 1 else _state_draws)(model, target, config)
        exponent = tempering_exponent(log_w, config.min_ess) if config.min_ess > 0 else 1.0
        weights = truncated_weights(exponent * log_w)  # zero for draws with a non-finite weight
        if not weights.any():
            raise RuntimeError("prior refit: no draw of the model has a finite importance weight")
        slow = model.latent.join_slow_(config.n_components) if config.slow_blocks == "joint" else model.latent.slow.resize_(config.n_components)
        fit = slow.fit_weighted(
            torch.as_tensor(z_slow),
            torch.as_tensor(weights),
            n_iter=config.n_iter,
            min_std=config.min_std,
            seed=seed + round_index,
        )
        records.append({"round": round_index, "ess_of_draws": kish_ess(log_w), "weight_exponent": exponent,
                        "n_samples": config.n_samples, "per_state_draws": config.per_state_draws,
                        "uniform_fraction": config.uniform_fraction, **fit})
        log.info("prior refit round %d: %d components fitted to %d points (%d draws) of ESS %.3f, weights^%.3f (EM: %d iterations)",
                 round_index, config.n_components, len(log_w), config.n_samples, records[-1]["ess_of_draws"], exponent, fit["iterations"])
    return records


def _defensive_draws(model: StructuredFlow, target: Target, config: PriorRefitConfig) -> tuple[np.ndarray, np.ndarray]:
    """(z_slow (N, ds), log w (N,)) of N draws from q_r = ((1 − f) π + f U) q(x | s), weights against q_r."""
    n_uniform = round(config.uniform_fraction * config.n_samples)
    sizes = {None: config.n_samples - n_uniform, model.latent.uniform_slow: n_uniform}
    parts = [draw_samples(model, target, n, config.batch_size, slow=slow) for slow, n in sizes.items() if n]
    z_slow, log_w = np.concatenate([p.z_slow for p in parts]), np.concatenate([p.log_w for p in parts])
    return z_slow, log_w + _log_prior_over_proposal(model, z_slow, config.uniform_fraction, n_uniform)


def _state_draws(model: StructuredFlow, target: Target, config: PriorRefitConfig) -> tuple[np.ndarray, np.ndarray]:
    """(s (S, ds), log W (S,)) of S = n_samples / M slow states s ~ r = (1 − f) π + f U, each weighted by
    W(s) = (1/M) Σ_j w(x_j) π(s) / r(s) over M draws x_j ~ q(x | s).

    Why: E_q(x|s)[w] π(s) = p(s), the target's slow marginal, so W(s) is an unbiased weight of s
    toward p(s) whose conditional part is averaged over M draws (Rao–Blackwellised in x) instead
    of carried by one. When Var(log w | s) is most of Var(log w), as on the tetrapeptide, the states'
    weights are far less spread than the draws' (Kish ESS 0.14–0.30 against 0.02–0.06 at M = 16),
    so the refit can take the full step (α = 1) toward p(s) that the tempered one only approaches.
    """
    per_state = config.per_state_draws
    n_states = config.n_samples // per_state
    n_uniform = round(config.uniform_fraction * n_states)
    with torch.no_grad():
        states = torch.cat([model.latent.slow.sample(n_states - n_uniform), model.latent.uniform_slow(n_uniform)]) \
            if n_uniform else model.latent.slow.sample(n_states)
    draws = draw_samples(model, target, n_states * per_state, config.batch_size, slow=states.repeat_interleave(per_state, 0))
    with np.errstate(divide="ignore"):  # a state whose draws all have zero weight keeps log W = −inf
        log_mean_w = logsumexp(clean_log_weights(draws.log_w).reshape(n_states, per_state), axis=1) - math.log(per_state)
    z_slow = states.cpu().double().numpy()
    return z_slow, log_mean_w + _log_prior_over_proposal(model, z_slow, config.uniform_fraction, n_uniform)


def _log_prior_over_proposal(model: StructuredFlow, z_slow: np.ndarray, uniform_fraction: float, n_uniform: int) -> np.ndarray | float:
    """log π(s) − log r(s), r = (1 − f) π + f U the slow proposal; 0 when none of the draws was uniform (n_uniform = 0,
    which f > 0 rounds to for small n)."""
    if n_uniform == 0:
        return 0.0
    with torch.no_grad():
        log_prior = model.latent.slow.log_prob(torch.as_tensor(z_slow).to(next(model.latent.slow.parameters()))).cpu().double().numpy()
    log_r = np.logaddexp(math.log1p(-uniform_fraction) + log_prior, math.log(uniform_fraction) + model.latent.uniform_slow_log_prob())
    return log_prior - log_r
