"""The metrics of a one-shot sample, whatever the target: :func:`evaluate_samples`."""

from __future__ import annotations

from flowcg.analysis.molecular import molecular_metrics
from flowcg.analysis.synthetic import target_metrics
from flowcg.sampling.sampler import SampleSet
from flowcg.targets.base import Target


def evaluate_samples(target: Target, samples: SampleSet, reference: tuple | None = None) -> dict:
    """ESS, log Z, KL (:meth:`SampleSet.summary`) and, for weights at β = 1: for a molecule its
    chirality, basin and (with ``reference`` (φ, ψ) from MD) Ramachandran metrics; for a synthetic
    target log Z against the exact value and :func:`target_metrics`."""
    summary = samples.summary()
    if samples.beta != 1.0:
        return {**summary, "log_z_exact": None}
    if getattr(target, "topology", None) is not None:
        return {**summary, **molecular_metrics(target.topology, samples, reference)}
    exact = target.log_z_exact
    return {
        **summary,
        "log_z_exact": exact,
        "log_z_error": None if exact is None else abs(summary["log_z"] - exact),
        **target_metrics(target, samples),
    }
