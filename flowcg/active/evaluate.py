"""How good is a CG model's ensemble: W1 in reference TICA space and Ramachandran KL.

The yardstick is a reference all-atom ensemble mapped to CG. TICA (deeptime) is fitted on the
pairwise bead distances of a reference MD *time series* at ``lag_frames`` saved frames (with the
1 ps frames of ``flowcg-reference`` the default 20 frames is 20 ps, the lag of the CGSchNet AL
benchmark); the model's CG frames and the reference ensemble are projected on the first two TICs
and compared by W1 (:mod:`flowcg.analysis.w1`). The ensemble is that MD itself
(:func:`save_cg_reference`), or, far more accurate, frames of the biased walkers resampled by their
weights (:func:`save_walker_cg_reference`), which keep the plain MD only for the TICA. φ, ψ of CG frames are the dihedrals of the backbone beads, so the
Ramachandran KL(ref‖model) on 64×64 bins and the basin populations need no backmapping.

W1 and KL judge the ensemble of a CG MD, which the CG prior alone can already get right (on alanine
dipeptide the prior inverted from the flow's draws reaches the W1 floor of the walker yardstick, and
so does every flow arm). What the labels teach is the mean force at fixed (φ, ψ), and
:func:`held_out_force_error` scores that directly: the force-matching loss of a model on held-out
equilibrium labels. With X = Cx and F = D f(x) for x ~ p,

    L(θ) = E |F_θ(X) − F|² / 3n = E |F_θ(X) − F̄(X)|² / 3n + E |F − F̄(X)|² / 3n,   F̄(X) = E[F | X],

(Noid et al., J. Chem. Phys. 128, 244114, 2008): the second term, the labels' own noise, is the same
for every model, so the difference of two models' held-out losses is the difference of their mean-force
errors, and on one held-out set it is paired (its noise largely cancels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import mdtraj as md
import numpy as np
import torch

from flowcg.active.backmap import TorsionBackmapper
from flowcg.active.flow_oracle import FlowOracle
from flowcg.active.labels import Labels
from flowcg.analysis.ramachandran import BASINS, basin_labels, basin_populations, plot_ramachandran, ramachandran_kl
from flowcg.analysis.w1 import fit_cg_tica, w1_tica
from flowcg.cg.mapping import CGMapping
from flowcg.cg.schnet import committee_forces
from flowcg.errors import ConfigError, MissingFileError, UnreadableFileError
from flowcg.io import load_npz, save_npz_atomic
from flowcg.sampling.importance import kish_ess, normalized_weights, systematic_resample

__all__ = ["CGReference", "held_out_force_error", "held_out_labels", "load_cg_reference", "plot_round_ramachandran", "plot_w1_per_round", "save_cg_reference",
           "save_walker_cg_reference"]


@dataclass
class CGReference:
    """Reference CG frames (T, n_beads, 3) nm, the TICA model (fitted on a time series) and their (φ, ψ)."""

    frames_nm: np.ndarray
    tica: object
    phi: np.ndarray
    psi: np.ndarray
    lag_frames: int

    @cached_property
    def basins(self) -> dict[str, float]:
        """Basin populations of the reference's (φ, ψ)."""
        return basin_populations(self.phi, self.psi)

    def evaluate(self, cg_frames_nm: np.ndarray, backmapper: TorsionBackmapper, seed: int = 0, log_weights=None) -> dict:
        """W1 (joint on TIC0–1 and per TIC), KL64 of (φ, ψ) and basin populations of model CG frames
        (``basin_*``) beside the reference's (``ref_basin_*``); ``log_weights`` (T,) weigh the frames
        (a biased CG MD's, reported with their Kish ESS fraction as ``frame_weight_ess``)."""
        if len(cg_frames_nm) == 0:
            return {"w1": float("nan"), "n_frames": 0}
        metrics = dict(w1_tica(cg_frames_nm, self.frames_nm, self.tica, seed=seed, model_log_weights=log_weights))
        phi, psi = backmapper.torsions(cg_frames_nm).numpy().T
        weights = None if log_weights is None else normalized_weights(log_weights)
        metrics["kl64"] = ramachandran_kl(self.phi, self.psi, phi, psi, weights=weights)
        metrics.update({f"basin_{k}": v for k, v in basin_populations(phi, psi, weights).items()})
        metrics.update({f"ref_basin_{k}": v for k, v in self.basins.items()})
        metrics["n_frames"] = len(cg_frames_nm)
        if log_weights is not None:
            metrics["frame_weight_ess"] = kish_ess(log_weights)
        return metrics


def save_cg_reference(folder: str | Path, mapping: CGMapping, path: str | Path, stride: int = 1) -> Path:
    """Map the reference MD of ``flowcg-reference`` in ``folder`` to CG and save it compactly (npz,
    float32 ``cg_frames_nm`` and the ``bead_atoms`` they belong to). Only the frames that
    ``reference.npz`` has committed are kept, so a run still in progress can be snapshotted."""
    folder = Path(folder)
    trajectory, topology = folder / "trajectory.dcd", folder / "topology.pdb"
    if not trajectory.is_file() or not topology.is_file():
        raise MissingFileError(f"no reference MD in {folder} (needs trajectory.dcd and topology.pdb from flowcg-reference)")
    with np.load(folder / "reference.npz") as committed:
        n_frames = len(committed["phi"])
    traj = md.load_dcd(str(trajectory), top=str(topology))[:n_frames:stride]
    if traj.n_atoms != mapping.n_atoms:
        raise ConfigError(f"reference has {traj.n_atoms} atoms, the mapping expects {mapping.n_atoms}")
    np.savez_compressed(path, cg_frames_nm=mapping.map_positions(traj.xyz).astype(np.float32), bead_atoms=mapping.bead_atoms)
    return Path(path)


def save_walker_cg_reference(walker_folder: str | Path, mapping: CGMapping, tica_reference: str | Path, path: str | Path,
                             n_frames: int = 50_000, seed: int = 0) -> Path:
    """A CG yardstick from a biased-walker run (``flowcg-reference method=walkers
    walkers.positions_every=n``): ``n_frames`` of its stored frames drawn with probability ∝ their
    weight exp(V/kT) (systematic resampling: an unweighted sample of the Boltzmann ensemble), mapped
    to CG, saved with the time-ordered CG frames of ``tica_reference`` that TICA is fitted on (a
    :func:`save_cg_reference` file, or an earlier walker yardstick, whose TICA frames are taken).
    Returns ``path``."""
    walker_folder = Path(walker_folder)
    positions = load_npz(walker_folder / "positions.npz", what="walker positions", keys=["positions_nm", "frame"])
    frames = load_npz(walker_folder / "reference.npz", what="walker frames", keys=["log_weight"])
    log_w = frames["log_weight"][positions["frame"]].astype(np.float64)
    chosen = systematic_resample(log_w, n_frames, seed)
    if positions["positions_nm"].shape[1] != mapping.n_atoms:
        raise ConfigError(f"the walkers hold {positions['positions_nm'].shape[1]} atoms, the mapping expects {mapping.n_atoms}")
    time_series = _read_cg_reference(tica_reference)
    if not np.array_equal(time_series["bead_atoms"], mapping.bead_atoms):
        raise ConfigError(f"the TICA reference {tica_reference} maps atoms {time_series['bead_atoms'].tolist()}, not {mapping.bead_atoms.tolist()}")
    save_npz_atomic(path, compressed=True,
                    cg_frames_nm=mapping.map_positions(positions["positions_nm"][chosen].astype(np.float64)).astype(np.float32),
                    tica_frames_nm=time_series["tica_frames_nm"], bead_atoms=mapping.bead_atoms,
                    resampled_from=np.array(len(log_w)), weight_ess=np.array(kish_ess(log_w)))
    return Path(path)


def _read_cg_reference(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a CG reference file, with ``tica_frames_nm`` its own frames where it has none
    (a :func:`save_cg_reference` file is a time series: TICA is fitted on the frames themselves)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no CG reference at {path} (write one with flowcg.active.evaluate.save_cg_reference)")
    saved = load_npz(path, what="CG reference")
    if not {"cg_frames_nm", "bead_atoms"} <= saved.keys():
        raise UnreadableFileError(f"{path}: not a CG reference (needs cg_frames_nm and bead_atoms)")
    saved.setdefault("tica_frames_nm", saved["cg_frames_nm"])
    return saved


def load_cg_reference(path: str | Path, mapping: CGMapping, backmapper: TorsionBackmapper, lag_frames: int = 20) -> CGReference:
    """The CG reference saved by :func:`save_cg_reference` or :func:`save_walker_cg_reference`, with
    its TICA (on ``tica_frames_nm`` where the file has them, else on its frames) and (φ, ψ)."""
    saved = _read_cg_reference(path)
    frames, bead_atoms = saved["cg_frames_nm"].astype(np.float64), saved["bead_atoms"]
    if not np.array_equal(bead_atoms, mapping.bead_atoms):
        raise ConfigError(f"the CG reference {path} maps atoms {bead_atoms.tolist()}, the loop's mapping {mapping.bead_atoms.tolist()}")
    tica_frames = saved["tica_frames_nm"].astype(np.float64)
    phi, psi = backmapper.torsions(frames).numpy().T
    return CGReference(frames, fit_cg_tica(tica_frames, lag_frames), phi, psi, lag_frames)


def plot_w1_per_round(metrics: list[dict], path: str | Path) -> Path | None:
    """PNG of W1 (TIC 0–1) against the round, from the rounds' metrics; None without a reference."""
    if not any("w1" in m for m in metrics):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([m["round"] for m in metrics], [m.get("w1", np.nan) for m in metrics], "o-")
    ax.set(xlabel="round", ylabel="W1 (TIC 0-1)", title="CG ensemble vs reference")
    fig.savefig(path, dpi=120)
    return Path(path)


def held_out_labels(oracle: FlowOracle, n: int, seed: int, path: str | Path) -> Labels:
    """n held-out equilibrium labels of the flow ``oracle`` (one-shot draws resampled by weight,
    :meth:`FlowOracle.equilibrium`), drawn once into ``path`` (atomic) and read back from it after, so that every
    model scored on them meets the same set (:func:`held_out_force_error`); ``seed`` must be one no model's data
    were drawn from."""
    path = Path(path)
    if path.is_file():
        return Labels.load(path)
    labels = oracle.equilibrium(n, seed=seed)
    labels.save(path)
    return labels


def held_out_force_error(models: Sequence[torch.nn.Module], labels: Labels, backmapper: TorsionBackmapper,
                         batch_size: int = 4096) -> dict:
    """Force-matching loss (kJ/mol/nm)² of the mean force of ``models`` (a committee, as the CG MD uses it) on
    held-out labels, Σ_k w_k |F_θ(X_k) − F_k|² / (3n Σ_k w_k) (module docstring): ``force_mse`` with its
    standard error over the rows ``force_mse_se`` (the rows of an equilibrium sample are independent),
    and per basin of the labels' (φ, ψ) (``force_mse_<basin>``, NaN where it has no row; ``n_<basin>``).
    Each row's squared error is also returned (``row_errors``, (K,)), for paired comparisons of models.

    >>> import numpy as np, torch
    >>> class Zero(torch.nn.Module):
    ...     dtype = torch.float64
    ...     def forces(self, x, create_graph=False): return torch.zeros_like(x)
    >>> class Torsions:
    ...     def torsions(self, x): return torch.zeros(len(x), 2)
    >>> n = 4
    >>> labels = Labels(np.zeros((n, 1, 3)), np.zeros((n, 2, 3)), np.full((n, 2, 3), 2.0), np.ones(n), np.arange(n), np.zeros(n))
    >>> round(held_out_force_error([Zero()], labels, Torsions())["force_mse"], 12)
    4.0
    """
    if not len(labels):
        raise ConfigError("no held-out labels to score")
    dtype = models[0].dtype
    predicted = []
    for start in range(0, len(labels), batch_size):
        x = torch.as_tensor(labels.cg_positions_nm[start:start + batch_size], dtype=dtype)
        predicted.append(committee_forces(models, x).to(torch.float64))
    residual = torch.cat(predicted).numpy() - labels.cg_forces_kJ_mol_nm
    row_errors = (residual**2).mean(axis=(1, 2))
    w = labels.weights / labels.weights.sum()
    mse = float(w @ row_errors)
    n_eff = 1.0 / float((w**2).sum())
    result = {"force_mse": mse, "force_mse_se": float(np.sqrt(w @ (row_errors - mse) ** 2 / n_eff)), "row_errors": row_errors}
    phi, psi = backmapper.torsions(labels.cg_positions_nm).numpy().T
    basin = basin_labels(phi, psi)
    for index, name in enumerate(BASINS):
        rows = basin == index
        result[f"n_{name}"] = int(rows.sum())
        result[f"force_mse_{name}"] = float(w[rows] @ row_errors[rows] / w[rows].sum()) if rows.any() else float("nan")
    return result


def plot_round_ramachandran(cg_frames_nm: np.ndarray, backmapper: TorsionBackmapper, path: str | Path,
                            reference: CGReference | None) -> Path | None:
    """(φ, ψ) log-density (a free-energy map up to −kT) of a round's CG MD, beside the reference's."""
    if len(cg_frames_nm) == 0:
        return None
    phi, psi = backmapper.torsions(cg_frames_nm).numpy().T
    return plot_ramachandran(path, (phi, psi), None if reference is None else (reference.phi, reference.psi))
