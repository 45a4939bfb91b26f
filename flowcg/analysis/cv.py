"""CV discovery: what the slow latents of a trained flow mean, set against TICA on reference MD.

Correlations. A slow latent z is a real number; a torsion τ is an angle. Their association is
Mardia's linear–circular correlation (Mardia & Jupp, *Directional Statistics*, §11.2),

    R²(z, τ) = (r_zc² + r_zs² − 2 r_zc r_zs r_cs) / (1 − r_cs²),

with r_zc = corr(z, cos τ), r_zs = corr(z, sin τ), r_cs = corr(cos τ, sin τ); R ∈ [0, 1] is the
multiple correlation of z with (cos τ, sin τ), so it is invariant to where the circle is cut.
Model samples are importance-weighted (self-normalised weights), so the figures describe the
target distribution, not the flow's errors.

A slow latent that is itself an angle (the wrapped-normal prior, ``slow_prior: wrapped``) is set
against a torsion by the circular–circular analogue: the first canonical correlation ρ₁ of
(cos z, sin z) and (cos τ, sin τ), which is 1 when z = ±τ + c and, unlike R, does not read the cut
of z at ±π as a jump (with z = ψ exactly and the β basin across ψ = ±π, R is only 0.88).

TICA (deeptime) is fitted on the reference MD time series of (cos φ, sin φ, cos ψ, sin ψ) (every
residue's, for a peptide: 4R features) at a lag of ``lag_frames`` frames (default 10 ps for frames saved every ps, beyond the ~1 ps librations
and below the ~100 ps–ns basin hops). Its leading TICs are then evaluated on the model samples'
torsions, which pairs every TIC value with a latent value: their Pearson correlation (weighted)
is the TIC–latent agreement.

The free-energy surface over the slow latents, F(z) = −log p(z) in kT, is the reweighted
histogram of the model samples' z_slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from deeptime.decomposition import TICA

from flowcg.analysis.molecular import Reference
from flowcg.errors import ConfigError
from flowcg.sampling.importance import normalized_weights


def _weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    a, b = a - np.sum(w * a), b - np.sum(w * b)
    denom = np.sqrt(np.sum(w * a * a) * np.sum(w * b * b))
    return float(np.sum(w * a * b) / denom) if denom > 0 else 0.0


def linear_circular_correlation(z: np.ndarray, tau: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mardia's R(z, τ) ∈ [0, 1] of a real variable and an angle in rad (see the module docstring)."""
    w = np.full(len(z), 1.0 / len(z)) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    c, s = np.cos(tau), np.sin(tau)
    r_zc, r_zs, r_cs = _weighted_corr(z, c, w), _weighted_corr(z, s, w), _weighted_corr(c, s, w)
    r2 = (r_zc**2 + r_zs**2 - 2 * r_zc * r_zs * r_cs) / max(1 - r_cs**2, 1e-12)
    return float(np.sqrt(np.clip(r2, 0.0, 1.0)))


def circular_circular_correlation(z: np.ndarray, tau: np.ndarray, weights: np.ndarray | None = None) -> float:
    """First canonical correlation ρ₁ ∈ [0, 1] of (cos z, sin z) and (cos τ, sin τ), angles in rad
    (see the module docstring).

    >>> tau = np.linspace(-3, 3, 1000)
    >>> round(circular_circular_correlation(np.angle(np.exp(1j * (0.5 - tau))), tau), 6)
    1.0
    """
    w = np.full(len(z), 1.0 / len(z)) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    a, b = (np.stack([np.cos(v), np.sin(v)], axis=1) for v in (z, tau))
    a, b = a - w @ a, b - w @ b
    saa, sbb, sab = (a * w[:, None]).T @ a, (b * w[:, None]).T @ b, (a * w[:, None]).T @ b

    def inverse_sqrt(m):
        values, vectors = np.linalg.eigh(m)
        return vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T

    return float(np.clip(np.linalg.svd(inverse_sqrt(saa) @ sab @ inverse_sqrt(sbb), compute_uv=False)[0], 0.0, 1.0))


def _by_residue(angles: np.ndarray) -> np.ndarray:
    angles = np.asarray(angles)
    return angles[:, None] if angles.ndim == 1 else angles


def torsion_features(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """The TICA features, shape (T, 4R): per residue k (cos φ_k, sin φ_k, cos ψ_k, sin ψ_k), for
    φ, ψ of shape (T,) (a dipeptide) or (T, R)."""
    phi, psi = _by_residue(phi), _by_residue(psi)
    return np.stack([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)], axis=2).reshape(len(phi), -1)


def torsion_labels(n_residues: int) -> list[str]:
    """Names of the backbone torsions in residue order: φ, ψ for a dipeptide, φ1, ψ1, … for a peptide."""
    return ["phi", "psi"] if n_residues == 1 else [f"{kind}{k + 1}" for k in range(n_residues) for kind in ("phi", "psi")]


def fit_tica(ref_phi: np.ndarray, ref_psi: np.ndarray, lag_frames: int = 10, dim: int = 2):
    """deeptime TICA model on the reference φ/ψ time series ((T,) or (T, R); kinetic-map scaling)."""
    if len(ref_phi) <= 2 * lag_frames:
        raise ConfigError(f"reference MD has {len(ref_phi)} frames, too few for TICA at lag {lag_frames}")
    return TICA(lagtime=lag_frames, dim=dim).fit(torsion_features(ref_phi, ref_psi)).fetch_model()


def cv_discovery(z_slow: np.ndarray, torsions: np.ndarray, torsion_names: list[str], log_w: np.ndarray,
                 phi: np.ndarray, psi: np.ndarray, reference: tuple | None = None, lag_frames: int = 10, top: int = 3,
                 periodic_latents: bool = False) -> dict:
    """Correlations of each slow latent with every torsion, and (with reference (φ, ψ)) with TICA.

    Args:
        z_slow: (N, ds) slow latents of the model samples.
        torsions: (N, T) torsion angles (rad) of the same samples; ``torsion_names`` labels them.
        log_w: (N,) log importance weights; non-finite ones get zero weight.
        phi, psi: (N,) backbone torsions of the samples (rad), (N, R) for a peptide.
        reference: reference MD (φ, ψ) time series for TICA (same layout), or None; TICA is skipped
            (and the report says why) for a weighted reference, whose frames are not a time series.
            It keeps as many TICs as there are slow latents (at least 2).
        periodic_latents: the slow latents are angles (a wrapped prior): latent–torsion association
            by :func:`circular_circular_correlation` instead of Mardia's R.
    """
    w = normalized_weights(log_w)
    association = circular_circular_correlation if periodic_latents else linear_circular_correlation
    report: dict = {"latents": [], "association": "circular-circular rho_1" if periodic_latents else "Mardia R (linear-circular)"}
    for j in range(z_slow.shape[1]):
        r = {name: association(z_slow[:, j], torsions[:, k], w) for k, name in enumerate(torsion_names)}
        best = sorted(r, key=r.get, reverse=True)[:top]
        report["latents"].append({"latent": j, "circular_correlation": r, "best_torsions": [[name, r[name]] for name in best]})
    reference = None if reference is None else Reference(*reference)
    if reference is not None and not reference.is_time_series:
        report["tica"] = {"skipped": "the reference frames are weighted (biased walkers), not an MD time series"}
    elif reference is not None:
        tica = fit_tica(reference.phi, reference.psi, lag_frames=lag_frames, dim=max(2, z_slow.shape[1]))
        tics_ref = tica.transform(torsion_features(reference.phi, reference.psi))
        tics_model = tica.transform(torsion_features(phi, psi))
        ref_angles = np.stack([_by_residue(reference.phi), _by_residue(reference.psi)], axis=2).reshape(len(tics_ref), -1)
        labels = torsion_labels(ref_angles.shape[1] // 2)
        report["tica"] = {
            "lag_frames": lag_frames,
            "features": [f"{f}_{name}" for name in labels for f in ("cos", "sin")],
            "timescales_frames": [float(t) for t in tica.timescales()[: tics_ref.shape[1]]],
            "tics": [
                {
                    "tic": i,
                    "corr_phi_psi_reference": {name: linear_circular_correlation(tics_ref[:, i], ref_angles[:, k]) for k, name in enumerate(labels)},
                    "corr_slow_latents": [_weighted_corr(tics_model[:, i], z_slow[:, j], w) for j in range(z_slow.shape[1])],
                }
                for i in range(tics_ref.shape[1])
            ],
        }
    return report


def cv_markdown(report: dict) -> str:
    """A short markdown summary of :func:`cv_discovery`'s report."""
    measure = report.get("association", "Mardia R (linear-circular)")
    lines = ["# CV discovery", "", f"Slow latents against torsions ({measure}, reweighted model samples):", ""]
    for entry in report["latents"]:
        best = ", ".join(f"{name} ({r:.2f})" for name, r in entry["best_torsions"])
        lines.append(f"- z_slow[{entry['latent']}]: best explains {best}")
    if "skipped" in report.get("tica", {}):
        lines += ["", f"TICA skipped: {report['tica']['skipped']}."]
    elif "tica" in report:
        tica = report["tica"]
        labels = list(tica["tics"][0]["corr_phi_psi_reference"]) if tica["tics"] else []
        lines += ["", f"TICA on the reference MD ((cos, sin) of the backbone torsions; lag {tica['lag_frames']} frames):", "",
                  "| TIC | timescale (frames) | " + " | ".join(f"R({name}) ref" for name in labels) + " | corr with z_slow |",
                  "|---|---|" + "---|" * len(labels) + "---|"]
        for tic, timescale in zip(tica["tics"], tica["timescales_frames"]):
            corr = ", ".join(f"{c:+.2f}" for c in tic["corr_slow_latents"])
            refs = " | ".join(f"{tic['corr_phi_psi_reference'][name]:.2f}" for name in labels)
            lines.append(f"| {tic['tic']} | {timescale:.1f} | {refs} | {corr} |")
    return "\n".join(lines) + "\n"


def plot_free_energy(z_slow: np.ndarray, log_w: np.ndarray, path: str | Path, bins: int = 60) -> Path:
    """PNG of F(z) = −log p(z) (kT) over the first two slow latents (or the 1-D profile for one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = normalized_weights(log_w)
    fig = Figure(figsize=(4.8, 3.9), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    lo, hi = np.quantile(z_slow, [0.001, 0.999], axis=0)
    if z_slow.shape[1] == 1:
        density, edges = np.histogram(z_slow[:, 0], bins=bins, range=(lo[0], hi[0]), weights=w, density=True)
        with np.errstate(divide="ignore"):
            ax.plot(0.5 * (edges[1:] + edges[:-1]), -np.log(density))
        ax.set(xlabel="z_slow[0]", ylabel="F (kT)")
    else:
        density, xe, ye = np.histogram2d(z_slow[:, 0], z_slow[:, 1], bins=bins, range=[(lo[0], hi[0]), (lo[1], hi[1])], weights=w, density=True)
        with np.errstate(divide="ignore"):
            free_energy = -np.log(density)
        free_energy -= free_energy[np.isfinite(free_energy)].min()
        image = ax.imshow(np.ma.masked_invalid(free_energy.T), origin="lower", extent=[xe[0], xe[-1], ye[0], ye[-1]],
                          aspect="auto", cmap="viridis", vmax=12)
        fig.colorbar(image, ax=ax, label="F (kT)")
        ax.set(xlabel="z_slow[0]", ylabel="z_slow[1]")
    ax.set_title("free energy over the learned CVs (reweighted)")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
