"""flowcg: data-free generative coarse-graining with structured-latent normalizing flows.

Public API:
    load_target(name, **options)   a Boltzmann target (energies in kT, batched)
    load_model(run_dir)            the trained flow of a ``flowcg-train`` run, with its target
    sample(model, target, n)       n iid samples with log q, energies and importance weights
"""

from __future__ import annotations

from flowcg.targets import load_target


def load_model(run_dir, device: str | None = None):
    """(model, target) of a finished ``flowcg-train`` run folder."""
    from flowcg.builders import load_run

    run = load_run(run_dir, device=device)
    return run.model, run.target


def sample(model, target, n: int, batch_size: int = 10_000, beta: float = 1.0):
    """n iid samples from ``model`` scored under ``target`` (a :class:`flowcg.sampling.SampleSet`)."""
    from flowcg.sampling import draw_samples

    return draw_samples(model, target, n, batch_size=batch_size, beta=beta)


__all__ = ["load_model", "load_target", "sample"]
__version__ = "0.1.0"
