"""Sampling and estimation: iid draws, importance weights, ESS, log Z, reweighted observables."""

from flowcg.sampling.importance import (kish_ess, kl_estimate, log_z_estimate, normalized_weights, pareto_khat, reweighted_mean,
                                        tempering_exponent, truncated_weights)
from flowcg.sampling.sampler import SampleSet, draw_samples

__all__ = ["SampleSet", "draw_samples", "kish_ess", "kl_estimate", "log_z_estimate", "normalized_weights", "pareto_khat",
           "reweighted_mean", "tempering_exponent", "truncated_weights"]
