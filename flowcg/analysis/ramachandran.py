"""Ramachandran (φ, ψ) analysis of alanine dipeptide: histogram KL / TV, basin populations, plots.

Angles are in rad on (−π, π]; φ = C(ACE)–N–CA–C and ψ = N–CA–C–N(NME) as found by
``mdtraj.compute_phi`` / ``compute_psi`` (atoms 4-6-8-14 and 6-8-14-16 in the openmmtools file).

Histogram metrics, on a grid of bins × bins over (−π, π]², model samples optionally carrying
self-normalised importance weights (``log_weights``) for the reweighted variants:

* ``kl_64``: FAB's ``kld_ram``, KL(ref‖model) = Σ ΔA · d_ref · log((d_ref + ε) / (d_model + ε)) on
  64×64 bins with d the histogram *densities* (rad⁻², ``density=True``), ΔA = (2π/64)² rad² and
  ε = 1e-10 added to the densities. In bin masses p = d · ΔA this is
  Σ p_ref · log((p_ref + ε ΔA) / (p_model + ε ΔA)), which is how it is computed here (with
  :func:`flowcg.analysis.histograms.kl_divergence` and eps = ε ΔA). An empty model bin under
  reference mass p costs p · log(p / (ε ΔA)): finite but large.
* ``kl_100``: the same estimator on 100×100 bins (the TA-BG / coarse-graining-AL resolution).
* ``tv_64`` / ``tv_100``: total variation ½ Σ |p_ref − p_model| of the bin masses.

Basins (degrees; the three regions partition the torus):

* ``alpha_L`` — the φ > 0 basins αL and C7ax: 0 ≤ φ < 120.
* ``alpha_R`` — right-handed helix: φ outside [0, 120) and −120 ≤ ψ < 50.
* ``beta`` — extended basins C5 / C7eq / PII: φ outside [0, 120) and (ψ ≥ 50 or ψ < −120).

The ψ cuts at 50° and −120° follow the usual αR / extended split of the φ < 0 half plane (the
saddles near ψ ≈ 60° and ψ ≈ −120° of the ALDP free-energy surface); the φ window [0°, 120°)
keeps the extended basin, which reaches φ = ±180°, whole across the periodic boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mdtraj as md
import numpy as np
import torch
from mdtraj.geometry.dihedral import indices_phi, indices_psi

from flowcg.analysis.histograms import kl_divergence, normalize, total_variation
from flowcg.coordinates.backbone import backbone_dihedrals, backbone_torsion_pairs
from flowcg.errors import ConfigError, UnreadableFileError
from flowcg.io import load_npz, save_npz_atomic
from flowcg.sampling.importance import as_numpy, kish_ess, normalized_weights

RAMACHANDRAN_RANGE = [(-math.pi, math.pi), (-math.pi, math.pi)]
#: FAB's ε, added to histogram densities (per unit of the binned variables), not to bin masses.
FAB_EPS = 1e-10
BASINS = ("beta", "alpha_R", "alpha_L")
#: TA-BG's clipped Kish ESS clips the largest 1e-4 of the weights.
ESS_CLIP_FRACTION = 1e-4


def backbone_torsion_atoms(topology: md.Topology) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices (4,) of φ and of ψ; the topology must have exactly one of each (a dipeptide)."""
    phi, psi = indices_phi(topology), indices_psi(topology)
    if len(phi) != 1 or len(psi) != 1:
        raise ConfigError(f"expected one φ and one ψ (a dipeptide), found {len(phi)} and {len(psi)}")
    return phi[0], psi[0]


def residue_torsion_atoms(topology: md.Topology) -> np.ndarray:
    """Atom indices (R, 2, 4) of every residue's (φ, ψ) (:func:`~flowcg.coordinates.backbone.backbone_torsion_pairs`);
    a ConfigError for a molecule without any, which has no Ramachandran plot."""
    pairs = backbone_torsion_pairs(topology)
    if not len(pairs):
        raise ConfigError("no residue with both a φ and a ψ torsion (not a peptide?)")
    return pairs


def residue_prefix(k: int, n_residues: int) -> str:
    """The prefix of residue k's (0-based) metric names: none for a dipeptide, ``res<k+1>_`` for a peptide."""
    return "" if n_residues == 1 else f"res{k + 1}_"


def reference_paths(folder, n_residues: int) -> list[Path]:
    """Where a run in ``folder`` writes its :class:`RamachandranReference` files:
    ``ramachandran_reference.npz`` for a dipeptide, ``ramachandran_reference_residue<k>.npz`` (k = 1 … R) for a peptide."""
    folder = Path(folder)
    if n_residues == 1:
        return [folder / "ramachandran_reference.npz"]
    return [folder / f"ramachandran_reference_residue{k + 1}.npz" for k in range(n_residues)]


def phi_psi(x, topology: md.Topology) -> tuple[np.ndarray, np.ndarray]:
    """φ, ψ (rad, (−π, π]) of frames x (B, N, 3) in nm (numpy or torch), each of shape (B,)."""
    x = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    phi, psi = backbone_dihedrals(x, np.array([backbone_torsion_atoms(topology)]))
    return as_numpy(phi[:, 0]), as_numpy(psi[:, 0])


def residue_phi_psi(x, topology: md.Topology) -> tuple[np.ndarray, np.ndarray]:
    """φ, ψ (rad) of every residue of :func:`residue_torsion_atoms` for frames x (B, N, 3) nm, each (B, R)."""
    x = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    phi, psi = backbone_dihedrals(x, residue_torsion_atoms(topology))
    return as_numpy(phi), as_numpy(psi)


def ramachandran_histogram(phi, psi, bins: int = 64, weights=None) -> np.ndarray:
    """(Weighted) counts (bins, bins) over (−π, π]², φ along axis 0."""
    counts, _, _ = np.histogram2d(as_numpy(phi), as_numpy(psi), bins=bins, range=RAMACHANDRAN_RANGE, weights=weights)
    return counts


def bin_area(bins: int) -> float:
    """Area ΔA = (2π / bins)² in rad² of one Ramachandran bin."""
    return (2 * math.pi / bins) ** 2


def kl_of_histograms(ref_counts: np.ndarray, model_counts: np.ndarray) -> float:
    """FAB's KL(ref‖model) of two Ramachandran histograms of the same (bins, bins) grid."""
    return kl_divergence(ref_counts, model_counts, eps=FAB_EPS * bin_area(ref_counts.shape[0]))


def ramachandran_kl(ref_phi, ref_psi, phi, psi, bins: int = 64, weights=None, ref_weights=None) -> float:
    """KL(ref‖model) of the Ramachandran histograms (FAB's estimator, ε = 1e-10 on densities);
    ``weights`` / ``ref_weights`` weigh the model / reference frames (e.g. a biased reference's)."""
    return kl_of_histograms(
        ramachandran_histogram(ref_phi, ref_psi, bins, ref_weights), ramachandran_histogram(phi, psi, bins, weights)
    )


def ramachandran_tv(ref_phi, ref_psi, phi, psi, bins: int = 64, weights=None, ref_weights=None) -> float:
    """Total-variation distance between the Ramachandran bin masses, in [0, 1]."""
    return total_variation(
        ramachandran_histogram(ref_phi, ref_psi, bins, ref_weights), ramachandran_histogram(phi, psi, bins, weights)
    )


def basin_labels(phi, psi) -> np.ndarray:
    """Index into :data:`BASINS` for every (φ, ψ) in rad (definitions in the module docstring)."""
    phi_deg, psi_deg = np.degrees(as_numpy(phi)), np.degrees(as_numpy(psi))
    left_handed = (phi_deg >= 0) & (phi_deg < 120)
    helical = (psi_deg >= -120) & (psi_deg < 50)
    return np.where(left_handed, 2, np.where(helical, 1, 0))


def basin_populations(phi, psi, weights=None) -> dict[str, float]:
    """Fraction of (weighted) samples in each basin of :data:`BASINS`."""
    labels = basin_labels(phi, psi)
    w = np.ones(labels.size) if weights is None else as_numpy(weights)
    mass = np.bincount(labels, weights=w, minlength=len(BASINS)) / w.sum()
    return {name: float(m) for name, m in zip(BASINS, mass)}


#: The grids of the histogram metrics (bins per angle).
GRIDS = (64, 100)


@dataclass(frozen=True)
class RamachandranReference:
    """What the metrics need of a reference ensemble, without its frames: the normalised (φ, ψ)
    bin masses on every grid of :data:`GRIDS`, the basin populations, and the reference's own
    noise floor (the same metrics between two independent halves of it, e.g. two sets of walkers).

    A biased-walker run of 10⁶ frames (tens of MB) becomes a file of ~100 kB that ships with the
    package (:meth:`save`, :meth:`load`), so every user is scored against the accurate reference.

    >>> rng = np.random.default_rng(0)
    >>> phi, psi = rng.uniform(-3, 3, (2, 10_000))
    >>> ref = RamachandranReference.from_frames(phi, psi, halves=np.arange(10_000) % 2 == 0)
    >>> round(float(ref.masses[64].sum()), 12), sorted(ref.noise_floor)
    (1.0, ['kl_100', 'kl_64', 'tv_100', 'tv_64'])
    """

    masses: dict[int, np.ndarray]
    basins: dict[str, float]
    temperature_K: float | None = None
    description: str = ""
    noise_floor: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_frames(cls, phi, psi, weights=None, temperature_K: float | None = None, description: str = "",
                    halves: np.ndarray | None = None) -> RamachandranReference:
        """From frames (rad) with optional frame weights; ``halves`` (a boolean mask of the frames)
        splits them into two independent halves whose disagreement is the noise floor."""
        phi, psi = as_numpy(phi), as_numpy(psi)
        weights = None if weights is None else as_numpy(weights)
        masses = {bins: normalize(ramachandran_histogram(phi, psi, bins, weights)) for bins in GRIDS}
        floor = {}
        if halves is not None and halves.any() and (~halves).any():
            first, second = (cls.from_frames(phi[h], psi[h], None if weights is None else weights[h]) for h in (halves, ~halves))
            floor = second.disagreement(first)
        return cls(masses, basin_populations(phi, psi, weights), temperature_K, description, floor)

    def disagreement(self, other: RamachandranReference) -> dict[str, float]:
        """KL(self ‖ other) and TV on every grid (``kl_64``, ``tv_64``, …): a noise floor when the two
        are independent halves of one reference."""
        out = {}
        for bins in GRIDS:
            out[f"kl_{bins}"] = kl_of_histograms(self.masses[bins], other.masses[bins])
            out[f"tv_{bins}"] = total_variation(self.masses[bins], other.masses[bins])
        return out

    def sample_size_floor(self, n_frames: int, repeats: int = 5, seed: int = 0) -> dict[str, float]:
        """Mean KL(self ‖ sample) and TV on every grid of ``n_frames`` iid draws from these bin masses.

        What a *perfect* sample of that size scores: on the 64² grid the binned KL of 10⁴ exact draws
        is ≈ 0.5, because most of the 4 096 bins hold a few frames or none; a finite sample is only
        worse than the reference where it exceeds this floor.

        >>> ref = RamachandranReference.from_frames(*np.random.default_rng(0).uniform(-3, 3, (2, 100_000)))
        >>> small, large = ref.sample_size_floor(1_000, repeats=2), ref.sample_size_floor(100_000, repeats=2)
        >>> bool(small["kl_64"] > 10 * large["kl_64"]), sorted(small)
        (True, ['kl_100', 'kl_64', 'tv_100', 'tv_64'])
        """
        rng = np.random.default_rng(seed)
        out: dict[str, float] = {}
        for bins in GRIDS:
            p = self.masses[bins]
            draws = [normalize(rng.multinomial(n_frames, p.ravel() / p.sum()).reshape(p.shape).astype(float)) for _ in range(repeats)]
            out[f"kl_{bins}"] = float(np.mean([kl_of_histograms(p, q) for q in draws]))
            out[f"tv_{bins}"] = float(np.mean([total_variation(p, q) for q in draws]))
        return out

    def save(self, path: str | Path) -> None:
        """Write the reference as an ``.npz`` atomically (no pickles)."""
        save_npz_atomic(path, **{f"mass_{bins}": m.astype(np.float64) for bins, m in self.masses.items()},
                        basin_names=np.array(list(self.basins)), basin_populations=np.array(list(self.basins.values())),
                        floor_names=np.array(list(self.noise_floor), dtype=str), floor_values=np.array(list(self.noise_floor.values()), dtype=float),
                        temperature_K=np.array(np.nan if self.temperature_K is None else self.temperature_K), description=np.array(self.description))

    #: The arrays :meth:`save` writes.
    KEYS = (*(f"mass_{b}" for b in GRIDS), "basin_names", "basin_populations", "floor_names", "floor_values", "temperature_K", "description")

    @classmethod
    def load(cls, path: str | Path) -> RamachandranReference:
        """The reference :meth:`save` wrote to ``path``."""
        return cls.from_arrays(load_npz(path, what="Ramachandran reference", keys=cls.KEYS), path)

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray], source: str | Path = "") -> RamachandranReference:
        """The reference held by the arrays of a file :meth:`save` wrote (read once by the caller)."""
        missing = sorted(set(cls.KEYS) - data.keys())
        if missing:
            raise UnreadableFileError(f"{source}: not a Ramachandran reference (no {', '.join(missing)})")
        temperature = float(data["temperature_K"])
        return cls({bins: data[f"mass_{bins}"] for bins in GRIDS},
                   dict(zip(data["basin_names"].tolist(), data["basin_populations"].tolist())),
                   None if math.isnan(temperature) else temperature, str(data["description"]),
                   dict(zip(data["floor_names"].tolist(), data["floor_values"].tolist())))

    def density(self, bins: int) -> np.ndarray:
        """Probability density (rad⁻²) on the ``bins`` grid, φ along axis 0."""
        return self.masses[bins] / bin_area(bins)


def ramachandran_metrics(reference: RamachandranReference, phi, psi, log_weights=None) -> dict[str, float]:
    """All (φ, ψ) metrics of a model sample against a reference, flat for ``metrics.json``.

    Keys: ``kl_64``, ``kl_100``, ``tv_64``, ``tv_100``, ``basin_<name>`` and
    ``ref_basin_<name>``; with ``log_weights`` (log w = −βU − log q per sample) also the
    reweighted ``*_rw`` variants, ``ess`` and ``ess_clipped`` (Kish, as a fraction of N); the
    reference's noise floor as ``ref_floor_<metric>``.
    """
    metrics: dict[str, float] = {}
    variants = {"": None} if log_weights is None else {"": None, "_rw": normalized_weights(log_weights)}
    for bins in GRIDS:
        for suffix, weights in variants.items():
            model = ramachandran_histogram(phi, psi, bins, weights)
            metrics[f"kl_{bins}{suffix}"] = kl_of_histograms(reference.masses[bins], model)
            metrics[f"tv_{bins}{suffix}"] = total_variation(reference.masses[bins], model)
    for suffix, weights in variants.items():
        for name, p in basin_populations(phi, psi, weights).items():
            metrics[f"basin_{name}{suffix}"] = p
    for name, p in reference.basins.items():
        metrics[f"ref_basin_{name}"] = p
    for name, value in reference.noise_floor.items():
        metrics[f"ref_floor_{name}"] = value
    if log_weights is not None:
        metrics["ess"] = kish_ess(log_weights)
        metrics["ess_clipped"] = kish_ess(log_weights, clip_fraction=ESS_CLIP_FRACTION)
    return metrics


def plot_ramachandran(path, model: tuple, reference: tuple | None = None, log_weights=None, bins: int = 64) -> Path:
    """Write a PNG of log-density Ramachandran histograms side by side.

    Panels: the model samples, the model reweighted by ``log_weights`` (if given), and the
    reference (if given), all on one logarithmic colour scale. ``model`` is a (φ, ψ) pair in rad,
    ``reference`` a :class:`RamachandranReference` (``bins`` must be one of its grids), a (φ, ψ)
    pair or a (φ, ψ, frame weights) triple such as a :class:`~flowcg.analysis.molecular.Reference`. Uses the Agg canvas directly, so no global matplotlib backend is set.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    def density(phi, psi, weights=None):
        counts = ramachandran_histogram(phi, psi, bins, weights)
        return counts / (counts.sum() * bin_area(bins))

    panels = [("model", density(*model))]
    if log_weights is not None:
        panels.append(("model, reweighted", density(*model, normalized_weights(log_weights))))
    if isinstance(reference, RamachandranReference):
        panels.append(("reference", reference.density(bins)))
    elif reference is not None:
        panels.append(("reference", density(*reference)))
    positive = np.concatenate([values[values > 0] for _, values in panels])
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None

    fig = Figure(figsize=(3.6 * len(panels) + 1.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    extent = [-math.pi, math.pi, -math.pi, math.pi]
    for ax, (title, values) in zip(axes, panels):
        # Empty bins are masked so they show as background rather than at the colour floor.
        image = ax.imshow(
            np.ma.masked_equal(values.T, 0), origin="lower", extent=extent, norm=norm, cmap="viridis", aspect="equal"
        )
        ax.set_title(title)
        ax.set_xlabel("φ (rad)")
    axes[0].set_ylabel("ψ (rad)")
    fig.colorbar(image, ax=list(axes), label="density (rad⁻²)")
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
