"""Physical prior energy for CG models, fitted by Boltzmann inversion of CG frames.

The prior keeps a learned CG potential in the physical region where it has no data (bonds
that do not break, beads that do not overlap). With kT = R T, R = 0.0083144626 kJ/mol/K:

* harmonic bonds   U = ½ k (b − b₀)², b the bead–bead distance (nm), k in kJ/mol/nm²;
* harmonic angles  U = ½ k (θ − θ₀)², θ ∈ [0, π] rad, k in kJ/mol/rad²;
* repulsion        U = ε (σ / r)⁶ between non-bonded pairs (r, σ in nm, ε in kJ/mol);
* dihedrals (off by default)  U = Σ_{n=1}^{N} a_n cos nφ + b_n sin nφ, φ ∈ (−π, π] rad, either
  Boltzmann-inverted from the frames (``dihedrals="boltzmann"``) or left as parameters that
  start at zero and are fitted with the network by force matching (``dihedrals="learned"``);
* coupled dihedral pairs (``dihedrals="boltzmann_2d"``)  U = Σ_{(m,n)} a_mn cos(mφ + nψ) +
  b_mn sin(mφ + nψ) over consecutive dihedrals (φ, ψ) sharing three beads, |m|, |n| ≤ N: a
  CMAP-like term (MacKerell et al. 2004) fitted as the maximum-likelihood density of the frames.

Boltzmann inversion. If a coordinate q alone were distributed as p(q) ∝ exp(−U(q) / kT), a
harmonic U = ½ k (q − q₀)² would make q Gaussian with mean q₀ and variance kT / k, so from
frames sampled at temperature T

    q₀ = mean(q),   k = kT / var(q).

This is the CGSchNet recipe; it ignores the Jacobians (r² for distances, sin θ for angles)
and the coupling between coordinates, which is harmless for stiff terms: the prior only needs
the right scale, the network learns the rest. Likewise a dihedral's free energy
−kT log p(φ) is read off a periodic histogram (with a pseudocount, so unvisited angles get a
large but finite penalty) and least-squares fitted by the truncated Fourier series.

Why a learned dihedral term. Boltzmann inversion is only right for frames drawn from the
equilibrium ensemble. Soft coordinates are where that fails first: frames of one short MD sit
in one basin, and the inverted free energy then charges every other basin ``kT log(count /
pseudocount)`` (≈ 4 kT for 500 frames) whatever its true weight — a barrier the network has to
learn away from labels that the barrier itself keeps the CG simulations from reaching. Force
matching has no such requirement: the mean force at a configuration does not depend on how often
the data visit it. A learned term keeps what the dihedral term is there for, signed sin nφ
features that tell a configuration from its mirror image, and takes its shape from the forces.
Its weakness is the converse: forces fix a free-energy difference only along paths the data
cover, so basins separated by a barrier the data barely visit get their relative level from
extrapolation. Measured on alanine dipeptide (``data_free_benchmarks/RESULTS.md``, active
learning): with 32 000 equilibrium labels the learned term put 19 % of the CG ensemble at
φ > 0, where the all-atom one has 0.2 % and the inverted term 0.18 %. Inversion is the default;
give it equilibrium frames (e.g. the flow oracle's one-shot draws, ``initial.source=flow``).

Why coupled pairs. Backbone torsions are not independent: ψ ≈ −40° occurs with φ ≈ −70° (αR),
not with φ ≈ −150°. A sum of 1-D terms reproduces each marginal and puts the product of the
marginals on the (φ, ψ) plane. Measured on alanine dipeptide (CG prior alone, inverted from 20 000
equilibrium flow draws, 64 × 100 ps of CG MD; ``data_free_benchmarks/RESULTS.md``): Ramachandran
KL64 to the reference 0.47 with 1-D terms, 0.14 with the pair term. The 2-D term is the exponential family
p(φ, ψ) ∝ exp(θ · g(φ, ψ)) with the Fourier features g; its maximum-likelihood θ matches the
frames' Fourier moments, E_θ[g] = mean of g over the frames (a convex problem, solved by Newton's
method with the partition function on a grid), and U = −kT θ · g. Truncation at order N keeps
it smooth where the frames have no data, with no pseudocount.

The other terms' share. The CG MD samples the dihedrals from exp(−(U_dihedral + U_rest)/kT), and
U_rest is not blind to them: the repulsion between beads three and four bonds apart depends on φ
and ψ (on alanine dipeptide's prior frames it charges αR 1.4 kJ/mol, 0.56 kT, more than β), so a
dihedral term that alone reproduces the frames' marginal gives the CG MD too little αR (prior
alone: 0.083–0.087 against 0.116). The inversion therefore reads the dihedral terms off the frames
reweighted by exp(+U_repulsion/kT): if the frames follow exp(−U_prior/kT), the inversion's own
assumption, the reweighted frames follow exp(−(U_dihedral + U_bonds + U_angles)/kT), whose
dihedral marginal is exp(−U_dihedral/kT) (bonds and angles, with their r² sin θ Jacobian, do not
depend on the dihedrals). The weights act only where frames are; a least-squares projection of
U_repulsion on the dihedral features, tried first, extrapolated into dihedral ranges without frames
and opened a false αL basin (85 % of the CG MD whose prior came from one short MD in β and αR).

A learned part counts the same way. A network added to the prior (CGSchNet) changes the dihedral
marginal too, and force labels, ≈ 300 kJ/mol/nm of noise about a mean force whose dihedral part is a
few kJ/mol/rad, fix the basins' balance far less well than the frames' density does. Refitting the
dihedral terms after each fit on the frames reweighted by exp(+(U_repulsion + U_network)/kT)
(:func:`invert_dihedral_terms`) keeps the whole model's dihedral marginal at the frames' (exact when
the model's distribution at fixed dihedrals is the frames'), and leaves the labels the rest: what the
frames' density cannot say. The network is fitted against the terms inverted before any label: fitted
against its own re-inversion, it would push against the terms that undo it, round after round.
Measured on alanine dipeptide (``data_free_benchmarks/RESULTS.md``, active learning, 5 seeds): the
AL arm's W1 0.0060 ± 0.0009, Ramachandran KL64 0.14, level with the prior alone (0.0067, 0.15)
where the same loop without re-inversion was 3× above it; re-inverting the last models of five AL
runs fitted without it: W1 0.031 → 0.009, KL64 0.46 → 0.17.

Repulsion. σ is the smallest distance observed for a pair (or for all pairs of the same pair
of bead types, or for all pairs at once); at that distance the repulsion costs ε (default
1 kT) and it grows as r⁻⁶ below it, so it is weak on the data (1.5–2.9 kJ/mol on alanine
dipeptide's frames, but not blind to the dihedrals: above) and stops collapse outside.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from flowcg.cg.mapping import CGMapping
from flowcg.coordinates.geometry import bond_angle, dihedral, distance
from flowcg.errors import ConfigError
from flowcg.units import kT

__all__ = [
    "DIHEDRAL_MODES",
    "DIHEDRAL_TERMS",
    "CGPrior",
    "FourierDihedralPairs",
    "FourierDihedrals",
    "HarmonicAngles",
    "HarmonicBonds",
    "INVERTED_DIHEDRAL_MODES",
    "Repulsion",
    "fit_prior",
    "invert_dihedral_terms",
]


#: How :func:`fit_prior` treats the CG dihedrals (module docstring).
DIHEDRAL_MODES = ("none", "boltzmann", "learned", "boltzmann_2d")
#: the modes whose dihedral terms are read off frames (:func:`invert_dihedral_terms`)
INVERTED_DIHEDRAL_MODES = ("boltzmann", "boltzmann_2d")
#: the names of a :class:`CGPrior`'s terms that depend on the dihedrals alone: one-dimensional
#: (:class:`FourierDihedrals`) and coupled consecutive pairs (:class:`FourierDihedralPairs`)
SINGLE_DIHEDRALS, DIHEDRAL_PAIRS = "dihedrals", "dihedral_pairs"
DIHEDRAL_TERMS = (SINGLE_DIHEDRALS, DIHEDRAL_PAIRS)


def _index_buffer(indices, width: int) -> Tensor:
    return torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1, width))


def _float_buffer(values) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(-1), dtype=torch.get_default_dtype())


class _HarmonicTerm(nn.Module):
    """Σ ½ k (q − q₀)² over index tuples of ``arity`` beads, q given by :meth:`coordinates`."""

    arity: int

    def __init__(self, indices, x0, k):
        super().__init__()
        self.register_buffer("indices", _index_buffer(indices, self.arity))
        self.register_buffer("x0", _float_buffer(x0))
        self.register_buffer("k", _float_buffer(k))

    @staticmethod
    def coordinates(x: Tensor, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        q = self.coordinates(x, self.indices)
        return 0.5 * (self.k.to(x) * (q - self.x0.to(x)) ** 2).sum(-1)


class HarmonicBonds(_HarmonicTerm):
    """Σ ½ k (b − b₀)² over bead pairs; b₀ in nm, k in kJ/mol/nm²."""

    arity = 2

    @staticmethod
    def coordinates(x: Tensor, pairs: Tensor) -> Tensor:
        """Bond lengths (B, n_bonds) in nm."""
        return distance(x[:, pairs[:, 0]], x[:, pairs[:, 1]])


class HarmonicAngles(_HarmonicTerm):
    """Σ ½ k (θ − θ₀)² over bead triples (vertex in the middle); θ₀ in rad, k in kJ/mol/rad²."""

    arity = 3

    @staticmethod
    def coordinates(x: Tensor, triples: Tensor) -> Tensor:
        """Bond angles (B, n_angles) in rad, in [0, π]."""
        return bond_angle(x[:, triples[:, 0]], x[:, triples[:, 1]], x[:, triples[:, 2]])


class Repulsion(nn.Module):
    """Σ ε (σ / r)⁶ over bead pairs; σ in nm (one per pair), ε in kJ/mol."""

    def __init__(self, pairs, sigma_nm, epsilon_kJ_mol: float):
        super().__init__()
        self.register_buffer("pairs", _index_buffer(pairs, 2))
        self.register_buffer("sigma", _float_buffer(sigma_nm))
        self.epsilon = float(epsilon_kJ_mol)

    def forward(self, x: Tensor) -> Tensor:
        r = HarmonicBonds.coordinates(x, self.pairs)
        return self.epsilon * ((self.sigma.to(x) / r) ** 6).sum(-1)


class FourierDihedrals(nn.Module):
    """Σ_d Σ_{n=1}^{N} a_dn cos nφ_d + b_dn sin nφ_d in kJ/mol; coefficients (n_dihedrals, N).

    ``learnable``: the coefficients are parameters (trained with the model that holds this term)
    instead of fixed buffers.
    """

    def __init__(self, quadruples, cos_coefficients, sin_coefficients, learnable: bool = False):
        super().__init__()
        self.register_buffer("quadruples", _index_buffer(quadruples, 4))
        n = self.quadruples.shape[0]
        a, b = _float_buffer(cos_coefficients).reshape(n, -1), _float_buffer(sin_coefficients).reshape(n, -1)
        if learnable:
            self.a, self.b = nn.Parameter(a), nn.Parameter(b)
        else:
            self.register_buffer("a", a)
            self.register_buffer("b", b)

    @staticmethod
    def coordinates(x: Tensor, quadruples: Tensor) -> Tensor:
        """Dihedrals (B, n_dihedrals) in rad, in (−π, π]."""
        return dihedral(*(x[:, quadruples[:, m]] for m in range(4)))

    def forward(self, x: Tensor) -> Tensor:
        phi = self.coordinates(x, self.quadruples)
        n_phi = phi[..., None] * torch.arange(1, self.a.shape[1] + 1, device=x.device, dtype=x.dtype)
        return (self.a.to(x) * torch.cos(n_phi) + self.b.to(x) * torch.sin(n_phi)).sum((-1, -2))


def fourier_orders_2d(n_terms: int) -> np.ndarray:
    """The (m, n) of a real 2-D Fourier series to order ``n_terms``: |m|, |n| ≤ N, one of ±(m, n), no (0, 0); (K, 2)."""
    span = range(-n_terms, n_terms + 1)
    return np.array([(m, n) for m in span for n in span if m > 0 or (m == 0 and n > 0)], dtype=np.int64).reshape(-1, 2)


class FourierDihedralPairs(nn.Module):
    """Σ_p Σ_k a_pk cos(m_k φ_p + n_k ψ_p) + b_pk sin(m_k φ_p + n_k ψ_p) in kJ/mol over pairs of dihedrals.

    Args:
        quadruple_pairs: (P, 2, 4) bead indices of each pair's two dihedrals (φ_p, ψ_p).
        orders: (K, 2) integer (m_k, n_k), e.g. :func:`fourier_orders_2d`.
        cos_coefficients, sin_coefficients: (P, K) a and b in kJ/mol.
    """

    def __init__(self, quadruple_pairs, orders, cos_coefficients, sin_coefficients):
        super().__init__()
        self.register_buffer("quadruple_pairs", torch.as_tensor(np.asarray(quadruple_pairs, dtype=np.int64).reshape(-1, 2, 4)))
        self.register_buffer("orders", torch.as_tensor(np.asarray(orders, dtype=np.int64).reshape(-1, 2)))
        n_pairs, n_orders = self.quadruple_pairs.shape[0], self.orders.shape[0]
        self.register_buffer("a", _float_buffer(cos_coefficients).reshape(n_pairs, n_orders))
        self.register_buffer("b", _float_buffer(sin_coefficients).reshape(n_pairs, n_orders))

    def forward(self, x: Tensor) -> Tensor:
        phi = FourierDihedrals.coordinates(x, self.quadruple_pairs[:, 0])  # (B, P)
        psi = FourierDihedrals.coordinates(x, self.quadruple_pairs[:, 1])
        orders = self.orders.to(x)
        argument = phi[..., None] * orders[:, 0] + psi[..., None] * orders[:, 1]  # (B, P, K)
        return (self.a.to(x) * torch.cos(argument) + self.b.to(x) * torch.sin(argument)).sum((-1, -2))


class CGPrior(nn.Module):
    """Sum of prior terms: U_prior(X) (B,) in kJ/mol for X (B, n_beads, 3) in nm."""

    def __init__(self, terms: dict[str, nn.Module]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)

    def fixed_energy(self, x: Tensor) -> Tensor:
        """The terms without trainable parameters, (B,) in kJ/mol: the part of U_prior fitted to the
        frames once (what energy-matching targets are measured against)."""
        energy = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for term in self.terms.values():
            if next(term.parameters(), None) is None:
                energy = energy + term(x)
        return energy

    def dihedral_energy(self, x: Tensor) -> Tensor:
        """The dihedral terms' energy (B,) in kJ/mol: a function of the CG dihedrals alone (1-D
        ``dihedrals`` and coupled ``dihedral_pairs``; zero without them)."""
        energy = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for name in DIHEDRAL_TERMS:
            if name in self.terms:
                energy = energy + self.terms[name](x)
        return energy

    def energies(self, x: Tensor) -> dict[str, Tensor]:
        """Each term's energy (B,) in kJ/mol, by name."""
        return {name: term(x) for name, term in self.terms.items()}

    def forward(self, x: Tensor) -> Tensor:
        energy = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for term in self.terms.values():
            energy = energy + term(x)
        return energy


def _boltzmann_harmonic(q: Tensor, kt: float) -> tuple[np.ndarray, np.ndarray]:
    """q₀ = mean, k = kT / var for samples q (T, n_terms)."""
    q = q.double()
    variance = q.var(0, unbiased=False)
    if not bool((variance > 0).all()):
        raise ConfigError("a bond or angle does not fluctuate in the frames; cannot Boltzmann-invert it")
    return q.mean(0).numpy(), (kt / variance).numpy()


def _frame_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Weights scaled to sum to the number of frames (ones if None), so that counts stay in frames."""
    if weights is None:
        return np.ones(n)
    weights = np.asarray(weights, dtype=np.float64)
    return weights * (n / weights.sum())


def fit_fourier_dihedral(
    phi: np.ndarray, kt: float, n_terms: int = 3, bins: int = 72, pseudocount: float = 1.0, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cos and sin coefficients (n_terms,) in kJ/mol of −kT log p(φ) for angles φ (rad), constant dropped.

    ``pseudocount`` is added to every bin's count, so an empty bin costs kT log(max count /
    pseudocount) rather than infinity; ``weights`` (T,) weigh the frames (scaled to sum to T).
    """
    counts, edges = np.histogram(np.asarray(phi), bins=bins, range=(-math.pi, math.pi), weights=_frame_weights(weights, len(phi)))
    centres = 0.5 * (edges[1:] + edges[:-1])
    free_energy = -kt * np.log(counts + pseudocount)
    n = np.arange(1, n_terms + 1)
    design = np.concatenate([np.ones((bins, 1)), np.cos(np.outer(centres, n)), np.sin(np.outer(centres, n))], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, free_energy, rcond=None)
    return coefficients[1 : 1 + n_terms], coefficients[1 + n_terms :]


def fit_fourier_dihedral_pair(phi: np.ndarray, psi: np.ndarray, kt: float, n_terms: int = 3, grid: int = 72,
                              ridge: float = 1e-4, iterations: int = 50, weights: np.ndarray | None = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orders (K, 2) and cos, sin coefficients (K,) in kJ/mol of the maximum-likelihood 2-D Fourier free energy
    of the angle pairs (φ, ψ) (rad; module docstring): Newton's method on the convex negative log-likelihood
    (+ ``ridge``/2 |θ|², which keeps θ finite when a feature's moment sits at its bound), the partition
    function on a ``grid`` × ``grid`` midpoint grid (exact for the series' own products up to order grid/2);
    ``weights`` (T,) weigh the frames."""
    orders = fourier_orders_2d(n_terms)

    def features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        argument = np.outer(a, orders[:, 0]) + np.outer(b, orders[:, 1])
        return np.concatenate([np.cos(argument), np.sin(argument)], axis=1)

    w = _frame_weights(weights, len(phi))
    target = w @ features(np.asarray(phi, dtype=np.float64), np.asarray(psi, dtype=np.float64)) / w.sum()
    centres = -math.pi + (np.arange(grid) + 0.5) * 2 * math.pi / grid
    on_grid = features(*(axis.ravel() for axis in np.meshgrid(centres, centres, indexing="ij")))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        logits = on_grid @ theta
        shift = logits.max()
        p = np.exp(logits - shift)
        z = p.sum()
        p /= z
        mean = p @ on_grid
        centred = on_grid - mean
        value = -(theta @ target) + shift + math.log(z / len(on_grid)) + 0.5 * ridge * theta @ theta
        return value, mean - target + ridge * theta, (centred * p[:, None]).T @ centred + ridge * np.eye(len(theta))

    theta = np.zeros(len(target))
    value, gradient, hessian = objective(theta)
    for _ in range(iterations):
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-8:  # backtracking: the full Newton step can overshoot far from the optimum
            trial = objective(theta - size * step)
            if trial[0] <= value - 1e-4 * size * gradient @ step:
                break
            size *= 0.5
        theta = theta - size * step
        value, gradient, hessian = trial
        if np.abs(gradient).max() < 1e-9:
            break
    return orders, -kt * theta[: len(orders)], -kt * theta[len(orders):]


def consecutive_dihedral_pairs(quadruples: np.ndarray) -> tuple[list[tuple[int, int]], list[int]]:
    """Pairs (i, j) of dihedrals where j continues i by one bead (i's last three beads are j's first
    three: φ and ψ of a backbone), each dihedral in at most one pair, taken in order; and the rest."""
    pairs, used = [], set()
    for i, first in enumerate(quadruples):
        if i in used:
            continue
        for j in range(i + 1, len(quadruples)):
            if j not in used and tuple(first[1:]) == tuple(quadruples[j][:3]):
                pairs.append((i, j))
                used.update((i, j))
                break
    return pairs, [d for d in range(len(quadruples)) if d not in used]


def _pair_sigmas(distances: np.ndarray, pairs: np.ndarray, mapping: CGMapping, group: str) -> np.ndarray:
    """σ (nm) per pair from the minimum distance of that pair, its type pair, or all pairs."""
    minimum = distances.min(axis=0)
    if group == "pair":
        return minimum
    if group == "all":
        return np.full_like(minimum, minimum.min())
    types = np.sort(mapping.bead_types[pairs], axis=1)
    keys = [tuple(t) for t in types]
    per_type = {key: min(m for k, m in zip(keys, minimum) if k == key) for key in set(keys)}
    return np.array([per_type[key] for key in keys])


def fit_prior(
    cg_positions_nm,
    mapping: CGMapping,
    temperature_K: float,
    *,
    bonds: bool = True,
    angles: bool = True,
    repulsion: bool = True,
    repulsion_sigma_nm: float | None = None,
    repulsion_group: str = "type",
    repulsion_epsilon_kT: float = 1.0,
    repulsion_min_separation: int = 3,
    dihedrals: str = "none",
    dihedral_terms: int = 3,
    dihedral_bins: int = 72,
    dihedral_indices: Sequence[Sequence[int]] | None = None,
) -> CGPrior:
    """Fit a :class:`CGPrior` to CG frames by Boltzmann inversion (module docstring).

    Args:
        cg_positions_nm: (T, n_beads, 3) CG frames in nm (numpy or torch), sampled at ``temperature_K``.
        mapping: supplies the CG bonds, angles, dihedrals, bead types and non-bonded pairs.
        temperature_K: temperature of the frames, in K.
        bonds, angles: include the harmonic bond / angle terms.
        repulsion: include the (σ/r)⁶ repulsion between pairs ≥ ``repulsion_min_separation``
            CG bonds apart (3 = all but 1–2 and 1–3 pairs).
        repulsion_sigma_nm: a single fixed σ in nm; None fits σ from the data as grouped by
            ``repulsion_group``: ``"type"`` (minimum over pairs of the same bead-type pair),
            ``"pair"`` (each pair its own minimum) or ``"all"`` (one global minimum).
        repulsion_epsilon_kT: ε in units of kT.
        dihedrals: Fourier dihedral terms on ``dihedral_indices`` (default: the mapping's dihedrals)
            with ``dihedral_terms`` harmonics: ``"none"``; ``"boltzmann"``, inverted from a
            ``dihedral_bins``-bin histogram of the frames; ``"learned"``, zero coefficients left to
            force matching; ``"boltzmann_2d"``, a coupled 2-D term on each pair of consecutive
            dihedrals (:func:`consecutive_dihedral_pairs`) by maximum likelihood, and the
            ``"boltzmann"`` 1-D term on a dihedral left unpaired (module docstring).
    """
    x = cg_positions_nm.detach() if isinstance(cg_positions_nm, Tensor) else torch.as_tensor(np.asarray(cg_positions_nm))
    x = x.to(torch.float64)
    if x.ndim != 3 or x.shape[1:] != (mapping.n_beads, 3) or x.shape[0] < 2:
        raise ValueError(f"expected ≥ 2 CG frames of shape (T, {mapping.n_beads}, 3), got {tuple(x.shape)}")
    kt = kT(temperature_K)
    terms: dict[str, nn.Module] = {}
    if bonds and len(mapping.bonds):
        pairs = torch.as_tensor(mapping.bonds)
        terms["bonds"] = HarmonicBonds(mapping.bonds, *_boltzmann_harmonic(HarmonicBonds.coordinates(x, pairs), kt))
    if angles and len(mapping.angles):
        triples = torch.as_tensor(mapping.angles)
        terms["angles"] = HarmonicAngles(mapping.angles, *_boltzmann_harmonic(HarmonicAngles.coordinates(x, triples), kt))
    if repulsion:
        pairs = mapping.nonbonded_pairs(repulsion_min_separation)
        if len(pairs):
            if repulsion_sigma_nm is not None:
                sigma = np.full(len(pairs), float(repulsion_sigma_nm))
            else:
                if repulsion_group not in ("type", "pair", "all"):
                    raise ConfigError(f"repulsion_group must be 'type', 'pair' or 'all', got '{repulsion_group}'")
                distances = HarmonicBonds.coordinates(x, torch.as_tensor(pairs)).numpy()
                sigma = _pair_sigmas(distances, pairs, mapping, repulsion_group)
            terms["repulsion"] = Repulsion(pairs, sigma, repulsion_epsilon_kT * kt)
    if dihedrals not in DIHEDRAL_MODES:
        raise ConfigError(f"unknown dihedral prior '{dihedrals}'; choose one of {', '.join(DIHEDRAL_MODES)}")
    chosen = mapping.dihedrals if dihedral_indices is None else dihedral_indices
    quadruples = np.asarray(chosen, dtype=np.int64).reshape(-1, 4)
    pairs, single = consecutive_dihedral_pairs(quadruples) if dihedrals == "boltzmann_2d" else ([], list(range(len(quadruples))))
    if dihedrals != "none" and single:
        zeros = np.zeros((len(single), dihedral_terms))
        terms[SINGLE_DIHEDRALS] = FourierDihedrals(quadruples[single], zeros, zeros, learnable=dihedrals == "learned")
    if pairs:
        orders = fourier_orders_2d(dihedral_terms)
        zeros = np.zeros((len(pairs), len(orders)))
        terms[DIHEDRAL_PAIRS] = FourierDihedralPairs(quadruples[np.array(pairs)], orders, zeros, zeros)
    prior = CGPrior(terms)
    if dihedrals in INVERTED_DIHEDRAL_MODES:
        invert_dihedral_terms(prior, x, temperature_K, bins=dihedral_bins)
    return prior


def invert_dihedral_terms(prior: CGPrior, cg_positions_nm, temperature_K: float, network_energy_kJ_mol=None, bins: int = 72) -> float:
    """Fit, in place, the coefficients of ``prior``'s inverted dihedral terms (its fixed 1-D ``dihedrals``
    and its ``dihedral_pairs``) to CG frames reweighted by exp(+(U_repulsion + U_network)/kT) (module
    docstring, "The other terms' share"), so that the whole model's dihedral marginal is the frames'.

    Args:
        cg_positions_nm: (T, n_beads, 3) frames in nm, sampled at ``temperature_K``.
        network_energy_kJ_mol: (T,) the energy of the model's learned part on the frames (kJ/mol), or
            None for the prior alone.
        bins: histogram bins of the 1-D terms.

    Returns:
        the Kish effective sample size of the frames' weights, as a fraction of T.
    """
    x = cg_positions_nm.detach() if isinstance(cg_positions_nm, Tensor) else torch.as_tensor(np.asarray(cg_positions_nm))
    x = x.to(torch.float64)
    kt = kT(temperature_K)
    with torch.no_grad():
        other = prior.terms["repulsion"](x).numpy() if "repulsion" in prior.terms else np.zeros(len(x))
    if network_energy_kJ_mol is not None:
        network = np.asarray(network_energy_kJ_mol, dtype=np.float64).reshape(-1)
        if network.shape != (len(x),) or not np.isfinite(network).all():
            raise ValueError(f"network energies must be {len(x)} finite values, got shape {network.shape}")
        other = other + network
    weights = np.exp((other - other.max()) / kt)
    single = prior.terms[SINGLE_DIHEDRALS] if SINGLE_DIHEDRALS in prior.terms else None
    if single is not None and isinstance(single.a, nn.Parameter):  # learned, not inverted
        single = None
    with torch.no_grad():
        if single is not None:
            phi = FourierDihedrals.coordinates(x, single.quadruples).numpy()
            for d in range(phi.shape[1]):
                a, b = fit_fourier_dihedral(phi[:, d], kt, single.a.shape[1], bins, weights=weights)
                single.a[d], single.b[d] = torch.as_tensor(a), torch.as_tensor(b)
        if DIHEDRAL_PAIRS in prior.terms:
            term = prior.terms[DIHEDRAL_PAIRS]
            phi = FourierDihedrals.coordinates(x, term.quadruple_pairs[:, 0]).numpy()
            psi = FourierDihedrals.coordinates(x, term.quadruple_pairs[:, 1]).numpy()
            n_terms = int(term.orders.abs().max())
            for p in range(phi.shape[1]):
                _, a, b = fit_fourier_dihedral_pair(phi[:, p], psi[:, p], kt, n_terms, weights=weights)
                term.a[p], term.b[p] = torch.as_tensor(a), torch.as_tensor(b)
    return float(weights.sum() ** 2 / (weights ** 2).sum() / len(weights))
