"""Metrics and plots of a one-shot sample of a molecule, optionally against reference MD.

The reference is the ``reference.npz`` that ``flowcg-reference`` writes (φ, ψ per frame, rad): an
MD time series (``method=md``) or biased walkers' frames with ``log_weight`` (``method=walkers``),
whose histograms are then weighted; or a compact :class:`~flowcg.analysis.ramachandran.RamachandranReference`
(histograms and basins only), such as the walker references shipped for aldp_implicit and aldp_vacuum.
Metrics (keys of ``metrics.json``):

* ``fraction_d``: share of samples with a D-configured CA centre;
* ``fraction_cis`` / ``fraction_cis_rw``: share of the samples with at least one cis amide bond
  (:mod:`flowcg.coordinates.amide`), raw and reweighted (the reweighted share is 0 when the target's
  state is ``l_trans``, whose weights are 0 there; under ``all`` it estimates the cis isomers'
  Boltzmann share, which MD and walker references, started trans, lack);
* samples outside the target's conformational state (:mod:`flowcg.coordinates.state`; by default
  the L, all-trans state, so D and cis samples) have zero weight and are left out of every histogram;
* with a reference: the Ramachandran KL / TV on 64² and 100² grids, raw and reweighted (``_rw``),
  and basin populations (see :mod:`flowcg.analysis.ramachandran`);
* without one: the basin populations of the model, raw and reweighted.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from flowcg.analysis.ramachandran import (
    RamachandranReference,
    basin_populations,
    plot_ramachandran,
    ramachandran_metrics,
    residue_phi_psi,
    residue_prefix,
)
from flowcg.coordinates.backbone import atom_path_name
from flowcg.coordinates.state import ConformationalState
from flowcg.errors import ConfigError, UnreadableFileError
from flowcg.io import load_npz
from flowcg.sampling.importance import normalized_weights
from flowcg.sampling.sampler import SampleSet


class Reference(NamedTuple):
    """Reference (φ, ψ) frames in rad, with normalised frame weights for a biased reference.

    ``weights`` is None for plain MD, whose frames are a time series of equal weight (what TICA
    and the MD-cost curve need)."""

    phi: np.ndarray
    psi: np.ndarray
    weights: np.ndarray | None = None

    @property
    def is_time_series(self) -> bool:
        return self.weights is None

    def residues(self) -> list[Reference]:
        """One (φ_k, ψ_k) reference per residue: itself for a dipeptide ((F,) arrays), the columns of
        a peptide's (F, R) arrays."""
        if np.ndim(self.phi) == 1:
            return [self]
        return [Reference(self.phi[:, k], self.psi[:, k], self.weights) for k in range(self.phi.shape[1])]


def load_reference(path: str | Path) -> Reference | RamachandranReference:
    """A reference from a file or folder: a ``flowcg-reference`` run (its ``reference.npz``, frames)
    or a compact :class:`RamachandranReference` (``ramachandran_reference.npz``, written by the
    walker runs and shipped for the targets in :data:`SHIPPED_REFERENCES`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "reference.npz"
    data = load_npz(path, what="reference (a flowcg-reference record or a Ramachandran reference)")
    if "mass_64" in data:
        return RamachandranReference.from_arrays(data, path)
    if not {"phi", "psi"} <= data.keys():
        raise UnreadableFileError(f"{path}: not a flowcg-reference record (no phi, psi) nor a Ramachandran reference")
    weights = normalized_weights(data["log_weight"]) if "log_weight" in data else None
    return Reference(data["phi"], data["psi"], weights)


#: The accurate yardstick of each target that has one: the walker reference shipped in
#: ``flowcg/targets/data/references/<target>.npz`` (provenance in that folder's PROVENANCE.md).
SHIPPED_REFERENCES = Path(__file__).resolve().parents[1] / "targets" / "data" / "references"


def shipped_reference(target_name: str, temperature_K: float) -> RamachandranReference | list[RamachandranReference] | None:
    """The walker reference shipped for ``target_name`` at ``temperature_K``: ``<name>.npz`` (one
    (φ, ψ) pair), or the list of ``<name>_residue<k>.npz``, k = 1 … (a peptide); None when none is
    shipped, or it is for another temperature (a different ensemble)."""
    single = SHIPPED_REFERENCES / f"{target_name}.npz"
    paths = [single] if single.is_file() else sorted(SHIPPED_REFERENCES.glob(f"{target_name}_residue*.npz"),
                                                     key=lambda p: int(p.stem.rsplit("residue", 1)[1]))
    if not paths:
        return None
    references = [RamachandranReference.load(path) for path in paths]
    if any(r.temperature_K is not None and abs(r.temperature_K - temperature_K) > 1e-6 for r in references):
        return None
    return references[0] if single.is_file() else references


def resolve_reference(setting: str | None, target) -> Reference | RamachandranReference | None:
    """The reference a run is scored against, from the ``reference`` setting: ``auto`` = the walker
    reference shipped for the target (:func:`shipped_reference`; None for targets without one),
    None / ``none`` = no reference, anything else a path for :func:`load_reference`."""
    if setting is None or str(setting).lower() == "none" or getattr(target, "topology", None) is None:
        return None
    if setting == "auto":
        return shipped_reference(target.name, target.temperature)
    return load_reference(setting)


def as_yardstick(reference: Reference | RamachandranReference | tuple) -> RamachandranReference:
    """The histograms and basins of ``reference`` (frames are binned once)."""
    if isinstance(reference, RamachandranReference):
        return reference
    reference = Reference(*reference)
    return RamachandranReference.from_frames(reference.phi, reference.psi, reference.weights)


def isomer_shares(topology, x: np.ndarray, log_w: np.ndarray) -> dict:
    """``fraction_d``, ``fraction_cis`` and ``fraction_cis_rw`` of frames x (module docstring)."""
    isomers = ConformationalState(topology, "all")
    cis = isomers.is_cis(x)
    return {"fraction_d": float(isomers.is_d(x).mean()), "fraction_cis": float(cis.mean()),
            "fraction_cis_rw": float(normalized_weights(log_w)[cis].sum())}


def per_residue_references(reference, n_residues: int) -> list:
    """``reference`` as one entry per residue: a list of per-residue references as it is, a peptide's
    MD record split by residue (:meth:`Reference.residues`), a single reference for a single residue,
    None for none; a ConfigError if the counts differ."""
    if reference is None:
        return [None] * n_residues
    references = list(reference) if isinstance(reference, list) else reference.residues() if isinstance(reference, Reference) else [reference]
    if len(references) != n_residues:
        raise ConfigError(f"the molecule has {n_residues} residues with (φ, ψ), the reference {len(references)}")
    return references


def molecular_metrics(topology, samples: SampleSet, reference=None) -> dict:
    """Isomer shares, basin populations and (with a reference) Ramachandran metrics of the samples in
    the target's state, for each residue with (φ, ψ) (prefixed ``res<k>_`` for peptides, which also
    get the mean over residues of every Ramachandran KL / TV as ``<metric>_mean``). ``reference``: a
    Reference or RamachandranReference (one residue), or a list of them, one per residue."""
    metrics = isomer_shares(topology, samples.x, samples.log_w)
    keep = samples.in_state
    phi, psi = residue_phi_psi(samples.x[keep], topology)  # one copy of the kept frames (10⁶ × atoms × 3 for a shipped set)
    log_w = samples.log_w[keep]
    n_residues = phi.shape[1]
    per_residue = []
    for k, ref in enumerate(per_residue_references(reference, n_residues)):
        if ref is not None:
            rama = ramachandran_metrics(as_yardstick(ref), phi[:, k], psi[:, k], log_weights=log_w)
            rama.pop("ess"), rama.pop("ess_clipped")  # the sample summary reports ESS over all samples
        else:
            rama = {f"basin_{name}": v for name, v in basin_populations(phi[:, k], psi[:, k]).items()}
            rama.update({f"basin_{name}_rw": v for name, v in basin_populations(phi[:, k], psi[:, k], normalized_weights(log_w)).items()})
        per_residue.append(rama)
        metrics.update({residue_prefix(k, n_residues) + name: v for name, v in rama.items()})
    if n_residues > 1:
        for name in (n for n in per_residue[0] if n.startswith(("kl_", "tv_"))):
            metrics[f"{name}_mean"] = float(np.mean([r[name] for r in per_residue]))
    return metrics


def plot_molecular_sample(topology, samples: SampleSet, path: Path, reference=None) -> list[Path]:
    """Ramachandran PNG per residue of the samples in the target's state (:func:`plot_residue_ramachandrans`)."""
    keep = samples.in_state
    phi, psi = residue_phi_psi(samples.x[keep], topology)
    return plot_residue_ramachandrans(path, phi, psi, samples.log_w[keep], reference)


def plot_residue_ramachandrans(path: Path, phi: np.ndarray, psi: np.ndarray, log_w: np.ndarray, reference=None) -> list[Path]:
    """Ramachandran PNG per residue of (φ, ψ) (N, R) — ``path``, or ``<stem>_residue<k>.png`` for
    peptides: model, reweighted model (``log_w``) and (if given) the reference."""
    n_residues = phi.shape[1]
    paths = [path] if n_residues == 1 else [path.with_name(f"{path.stem}_residue{k + 1}{path.suffix}") for k in range(n_residues)]
    return [plot_ramachandran(p, (phi[:, k], psi[:, k]), ref, log_weights=log_w)
            for k, (p, ref) in enumerate(zip(paths, per_residue_references(reference, n_residues)))]


def torsion_table(transform, topology, x: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Names and values (N, T) in rad of every torsion coordinate of ``transform`` for frames x (N, atoms, 3).

    Names are the four atoms (``RESn:ATOM``, n the residue number) with the backbone torsions marked,
    e.g. ``phi(ACE1:C-ALA2:N-ALA2:CA-ALA2:C)`` for a dipeptide, ``phi2(…)`` for residue 2 of a peptide.
    """
    columns = transform.periodic_mask.nonzero().ravel().tolist()
    backbone = transform.backbone_indices
    single = len(backbone) == 2
    labels = {index: f"{'psi' if k % 2 else 'phi'}{'' if single else k // 2 + 1}" for k, index in enumerate(backbone)}
    names = []
    for k in columns:
        quad = atom_path_name(topology, transform.atom_indices[k])
        names.append(f"{labels[k]}({quad})" if k in labels else quad)
    with torch.no_grad():
        ic, _ = transform.inverse(torch.as_tensor(x, dtype=torch.float64))
    return names, ic[:, columns].numpy()
