"""PNG plots of a run: training curves, the β schedule, marginals and samples against the target.

Everything renders with matplotlib's Agg backend (no display needed) and closes its figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flowcg.analysis.molecular import plot_molecular_sample  # noqa: E402
from flowcg.sampling.importance import normalized_weights  # noqa: E402
from flowcg.sampling.sampler import SampleSet  # noqa: E402
from flowcg.targets.base import Target  # noqa: E402
from flowcg.targets.synthetic import DoubleWell, GaussianMixture, SlowFastGaussianMixture  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(state: dict, path: Path) -> Path:
    """Loss per step, and ESS / log Z per stage."""
    curve = np.array([row for row in state["curve"]], dtype=float).reshape(-1, 4)
    stages = state["stages"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(curve[:, 0], curve[:, 2], lw=0.8)
    axes[0].set(xlabel="step", ylabel="loss  E_q[log q + βu]", title="reverse-KL loss")
    steps = [r["step"] for r in stages]
    axes[1].plot(steps, [r["ess"] for r in stages], "o-", ms=3, label="ESS at stage β")
    axes[1].plot(steps, [r["ess_target"] for r in stages], "s-", ms=3, label="ESS at β = 1")
    axes[1].set(xlabel="step", ylabel="Kish ESS", ylim=(0, 1.02), title="effective sample size")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [r["log_z"] for r in stages], "o-", ms=3)
    axes[2].set(xlabel="step", ylabel="log Ẑ_β", title="log Z estimate per stage")
    return _save(fig, path)


def plot_beta_schedule(state: dict, path: Path) -> Path:
    """β against training step, on a log axis."""
    curve = np.array([row for row in state["curve"]], dtype=float).reshape(-1, 4)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.semilogy(curve[:, 0], curve[:, 1], lw=1.2)
    ax.set(xlabel="step", ylabel="β", title=f"tempering schedule ({len(state['stages'])} stages)")
    return _save(fig, path)


def _exact_reference(target: Target, n: int) -> np.ndarray | None:
    try:
        return target.sample_exact(n).numpy()
    except NotImplementedError:
        return None


def plot_marginals(target: Target, samples: SampleSet, path: Path, max_dims: int = 4) -> Path:
    """1-D marginals: model, reweighted model and the exact answer (density or exact samples)."""
    w = normalized_weights(samples.log_w)
    dims = min(samples.x.shape[1], max_dims)
    reference = None if isinstance(target, DoubleWell) else _exact_reference(target, len(w))
    fig, axes = plt.subplots(1, dims, figsize=(3.6 * dims, 3.2), squeeze=False)
    for d, ax in enumerate(axes[0]):
        values = samples.x[:, d]
        lo, hi = np.quantile(values, [0.0005, 0.9995])
        bins = np.linspace(lo, hi, 80)
        ax.hist(values, bins=bins, density=True, histtype="step", label="model")
        ax.hist(values, bins=bins, weights=w, density=True, histtype="step", label="reweighted")
        if isinstance(target, DoubleWell) and d == 0:
            grid = np.linspace(lo, hi, 400)
            ax.plot(grid, target.x1_density(grid), "k--", lw=1, label="exact")
            ax.set_yscale("log")  # the right well holds < 1 % of the mass
            ax.set_ylim(bottom=1e-4)
        elif isinstance(target, DoubleWell):
            grid = np.linspace(lo, hi, 400)
            ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", lw=1, label="exact")
        elif reference is not None:
            ax.hist(reference[:, d], bins=bins, density=True, histtype="step", color="k", ls="--", label="exact samples")
        ax.set(xlabel=f"x{d + 1}", title=f"marginal of x{d + 1}")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_samples(target: Target, samples: SampleSet, path: Path, n_show: int = 5000) -> Path:
    """Samples in the first two coordinates over the energy contours (2-D targets) or over exact
    samples (higher-dimensional mixtures, where a 2-D energy slice would mislead)."""
    x = samples.x[:n_show]
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    if target.dim == 2:
        lo, hi = np.minimum(x.min(0), -1), np.maximum(x.max(0), 1)
        if isinstance(target, GaussianMixture):
            lo, hi = np.minimum(lo, target.means.min(0).values.numpy() - 5), np.maximum(hi, target.means.max(0).values.numpy() + 5)
        g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
        grid = torch.as_tensor(np.stack([g1.ravel(), g2.ravel()], 1))
        with torch.no_grad():
            u = target.double()._reduced_energy(grid).numpy().reshape(g1.shape)
        levels = np.quantile(u, np.linspace(0.0, 0.6, 16))
        ax.contour(g1, g2, u, levels=np.unique(levels), cmap="Greys", linewidths=0.7)
    else:
        reference = _exact_reference(target, n_show)
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.6", alpha=0.5, label="exact samples")
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, label="model samples")
    if isinstance(target, GaussianMixture | SlowFastGaussianMixture):
        means = (target.slow if isinstance(target, SlowFastGaussianMixture) else target).means.numpy()
        ax.scatter(means[:, 0], means[:, 1], marker="x", c="r", s=25, label="mode centres")
    ax.set(xlabel="x1", ylabel="x2", title=f"{target.name}: samples")
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def plot_run(target: Target, state: dict, samples: SampleSet, folder: Path, reference: tuple | None = None) -> list[Path]:
    """All plots of a finished run into ``folder`` (for a molecule: the Ramachandran plot, with the
    reference MD's (φ, ψ) if given); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [plot_training(state, folder / "training.png"), plot_beta_schedule(state, folder / "beta_schedule.png")]
    if getattr(target, "topology", None) is not None:
        return paths + plot_molecular_sample(target.topology, samples, folder / "ramachandran.png", reference)
    return paths + [plot_marginals(target, samples, folder / "marginals.png"), plot_samples(target, samples, folder / "samples.png")]
