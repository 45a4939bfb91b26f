"""A batched PyTorch re-implementation of the OpenMM force terms of small molecules, with analytic forces.

:class:`TorchForceField` reads the parameters out of an ``openmm.System`` and evaluates the
potential energy U(x) of a batch of configurations x of shape ``(B, N, 3)`` (nm) in kJ/mol together
with its gradient ∂U/∂x in kJ/(mol nm), both in one pass of hand-written derivatives, vectorised over
the batch and over the terms. ``forward`` exposes U to autograd through a Function whose backward
only scales the stored gradient, so ``U.backward()`` costs one multiplication; first derivatives
only (no double backward). It runs on any torch device in float32 or float64.

Layout: the configurations are processed in chunks of :data:`CHUNK`, atom-major ``(N, 3, b)`` so
that every term gathers whole contiguous rows of its atoms (``index_select``), computes on
``(M, b)`` tensors (M terms or atom pairs, the batch innermost) and scatters its per-atom
gradients back with one ``index_add_``. Pair terms see the unordered pairs i < j
(:func:`unordered_pairs`) and return ∂U/∂r²_ij, which the force field turns into atom gradients
2 ∂U/∂r²_ij (x_i − x_j) once for all of them.

Supported forces (anything else raises :class:`UnsupportedForceError`):

* ``HarmonicBondForce``      U = Σ ½ k (r − r₀)²
* ``HarmonicAngleForce``     U = Σ ½ k (θ − θ₀)²
* ``PeriodicTorsionForce``   U = Σ k (1 + cos(n φ − φ₀))
* ``NonbondedForce`` (``NoCutoff``)
      U = Σ_{i<j} [ k_e q_i q_j / r + 4 ε_ij ((σ_ij/r)¹² − (σ_ij/r)⁶) ],
      Lorentz–Berthelot σ_ij = (σ_i+σ_j)/2, ε_ij = √(ε_i ε_j); an exception *replaces* its pair
      (that is where the scaled 1-4 terms live; an exception with zero charge product and zero ε is
      an exclusion); k_e = 1/(4π ε₀) = 138.935457… kJ nm/(mol e²).
* ``GBSAOBCForce`` and the ``CustomGBForce`` that ``AmberPrmtopFile``/``ForceField`` build for OBC1
  and OBC2 (see :class:`OBCGeneralizedBorn` for the math).
* ``CMMotionRemover`` (no energy; ignored).

On construction the force field checks itself against OpenMM (Reference platform) on the given
positions and a few perturbed copies, and raises :class:`ForceFieldMismatchError` if energies or
forces disagree beyond a dtype-dependent tolerance, so a silently wrong parameter read is impossible.

Compiled kernels (``compile=True``): the eager pass is a few hundred small tensor ops per chunk,
each a separate sweep over memory; ``torch.compile`` (inductor) fuses them into a few loops, about
3× faster on a CPU core for alanine dipeptide (``data_free_benchmarks/energy_throughput.py``). Only
full chunks of :data:`CHUNK` configurations take the compiled path, so it is compiled once for one
static shape (seconds, cached on disk by torch across processes); shorter remainders run eagerly.
The first compiled chunk is also evaluated eagerly and the two must agree within the tolerances of
the OpenMM self-check; a compiled kernel that disagrees, or a compilation that fails (no C++
compiler, say), is logged and the force field stays eager from then on.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import openmm
import torch
from openmm import unit
from torch import Tensor, nn

from flowcg.compiled import CheckedCompile
from flowcg.targets.cpu_allocator import retain_freed_memory
from flowcg.threads import FORCEFIELD_THREADS, torch_threads

log = logging.getLogger(__name__)

#: Configurations per chunk: long enough tensor ops to amortise their dispatch cost (a few µs
#: each), small enough temporaries (≤ 1 MB in float32) to stay in the outer caches.
CHUNK = 512

#: 1/(4π ε₀) in kJ nm/(mol e²), the value OpenMM's NonbondedForce and GBSAOBCForce use.
ONE_4PI_EPS0 = 138.93545764438198


class UnsupportedForceError(NotImplementedError):
    """An OpenMM force (or force setting) that the torch backend does not implement."""


class ForceFieldMismatchError(RuntimeError):
    """The torch force field disagrees with OpenMM beyond tolerance."""


def _unsupported(what: str) -> UnsupportedForceError:
    return UnsupportedForceError(f"torch backend does not implement {what}; use backend='openmm'")


def _require_nonperiodic(force: openmm.Force) -> None:
    if force.usesPeriodicBoundaryConditions():
        raise _unsupported(f"{type(force).__name__} with periodic boundary conditions")


def _column(values) -> Tensor:
    """Per-term parameters as a float64 column (M, 1) that broadcasts over the batch axis; the
    module is cast to its working dtype once, at the end."""
    return torch.tensor(np.asarray(values, dtype=np.float64).reshape(-1, 1))


def unordered_pairs(n_atoms: int) -> Tensor:
    """The atom pairs i < j, shape (2, n(n−1)/2): the pair order every pair term uses."""
    return torch.triu_indices(n_atoms, n_atoms, 1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """a × b for component-major vectors of shape (M, 3, B)."""
    a0, a1, a2 = a.unbind(1)
    b0, b1, b2 = b.unbind(1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """a · b for component-major vectors (M, 3, B) → (M, B)."""
    return (a * b).sum(1)


def _gather(y: Tensor, idx: Tensor) -> Tensor:
    """Atoms idx (M, k) of atom-major coordinates y (N, 3, B) → (M, k, 3, B).

    index_select over the leading atom axis copies whole contiguous rows: an order of magnitude
    faster (forward and backward) than advanced indexing of (B, N, 3).
    """
    return y.index_select(0, idx.reshape(-1)).view(*idx.shape, *y.shape[1:])


class HarmonicBonds(nn.Module):
    """U = Σ_b ½ k_b (r_b − r₀_b)², k in kJ/(mol nm²), r in nm; ∂U/∂x₁ = −∂U/∂x₀ = k (r − r₀) d/r,
    d = x₁ − x₀."""

    def __init__(self, force: openmm.HarmonicBondForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        self.register_buffer("idx", torch.tensor([p[:2] for p in params], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("r0", _column([p[2].value_in_unit(unit.nanometer) for p in params]))
        self.register_buffer(
            "k", _column([p[3].value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) for p in params])
        )

    def energy_and_gradient(self, y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """U (B,) and ∂U/∂x of the atoms ``idx[:, k]``, k = 0, 1, each (M, 3, B), from atom-major y (N, 3, B)."""
        p = _gather(y, self.idx)
        d = p[:, 1] - p[:, 0]
        r = _dot(d, d).sqrt()
        stretch = r - self.r0
        g = (self.k * stretch / r).unsqueeze(1) * d
        return (0.5 * self.k * stretch * stretch).sum(0), (-g, g)


class HarmonicAngles(nn.Module):
    """U = Σ_a ½ k_a (θ_a − θ₀_a)², k in kJ/(mol rad²), θ the angle between u = x₀ − x₁, v = x₂ − x₁.

    θ = atan2(|w|, u·v) with w = u × v (exact at every angle); ∂θ/∂u = (u × w)/(|u|²|w|),
    ∂θ/∂v = (w × v)/(|v|²|w|), ∂θ/∂x₁ = −∂θ/∂u − ∂θ/∂v. At θ = 0, π the gradient direction is
    undefined; |w| is floored there (as in OpenMM), which gives a zero force.
    """

    def __init__(self, force: openmm.HarmonicAngleForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        self.register_buffer("idx", torch.tensor([p[:3] for p in params], dtype=torch.long).reshape(-1, 3))
        self.register_buffer("theta0", _column([p[3].value_in_unit(unit.radian) for p in params]))
        self.register_buffer(
            "k", _column([p[4].value_in_unit(unit.kilojoule_per_mole / unit.radian**2) for p in params])
        )

    def energy_and_gradient(self, y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """U (B,) and ∂U/∂x of the atoms ``idx[:, k]``, k = 0…2, each (M, 3, B), from atom-major y (N, 3, B)."""
        p = _gather(y, self.idx)
        u, v = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1]
        w = _cross(u, v)
        norm_w = _dot(w, w).sqrt().clamp_min(torch.finfo(y.dtype).tiny ** 0.25)
        bend = torch.atan2(norm_w, _dot(u, v)) - self.theta0
        k_bend = self.k * bend
        g0 = (k_bend / (_dot(u, u) * norm_w)).unsqueeze(1) * _cross(u, w)
        g2 = (k_bend / (_dot(v, v) * norm_w)).unsqueeze(1) * _cross(w, v)
        return (0.5 * k_bend * bend).sum(0), (g0, -g0 - g2, g2)


class PeriodicTorsions(nn.Module):
    """U = Σ_t k_t (1 + cos(n_t φ_t − φ₀_t)), k in kJ/mol; φ the IUPAC dihedral in (−π, π].

    With b₁ = x₁ − x₀, b₂ = x₂ − x₁, b₃ = x₃ − x₂, A = b₁ × b₂, C = b₂ × b₃:
    φ = atan2(|b₂| b₁·C, A·C), and (Bekker; Blondel & Karplus 1996)
    ∂φ/∂x₀ = −|b₂| A/|A|², ∂φ/∂x₃ = |b₂| C/|C|², with s = p ∂φ/∂x₀ − q ∂φ/∂x₃,
    p = −b₁·b₂/|b₂|², q = −b₃·b₂/|b₂|²: ∂φ/∂x₁ = s − ∂φ/∂x₀, ∂φ/∂x₂ = −s − ∂φ/∂x₃.
    The geometry is computed once per distinct atom quadruple (several periodicities share one).
    """

    def __init__(self, force: openmm.PeriodicTorsionForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        quads, term_quad = np.unique(np.array([p[:4] for p in params], dtype=np.int64).reshape(-1, 4), axis=0, return_inverse=True)
        self.register_buffer("idx", torch.tensor(quads, dtype=torch.long))
        self.register_buffer("term_quad", torch.tensor(term_quad.reshape(-1), dtype=torch.long))
        self.register_buffer("n", _column([float(p[4]) for p in params]))
        self.register_buffer("phase", _column([p[5].value_in_unit(unit.radian) for p in params]))
        self.register_buffer("k", _column([p[6].value_in_unit(unit.kilojoule_per_mole) for p in params]))

    def energy_and_gradient(self, y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """U (B,) and ∂U/∂x of the atoms ``idx[:, k]``, k = 0…3, each (M, 3, B), from atom-major y (N, 3, B)."""
        p = _gather(y, self.idx)
        b1, b2, b3 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
        a, c = _cross(b1, b2), _cross(b2, b3)
        b2_sq = _dot(b2, b2)
        b2_norm = b2_sq.sqrt()
        phi = torch.atan2(b2_norm * _dot(b1, c), _dot(a, c))
        angle = self.n * phi.index_select(0, self.term_quad) - self.phase
        energy = (self.k * (1.0 + torch.cos(angle))).sum(0)
        du_dphi = torch.zeros_like(phi).index_add_(0, self.term_quad, -self.k * self.n * torch.sin(angle))
        g0 = (-du_dphi * b2_norm / _dot(a, a)).unsqueeze(1) * a
        g3 = (du_dphi * b2_norm / _dot(c, c)).unsqueeze(1) * c
        s = (-_dot(b1, b2) / b2_sq).unsqueeze(1) * g0 + (_dot(b3, b2) / b2_sq).unsqueeze(1) * g3
        return energy, (g0, s - g0, -s - g3, g3)


class Nonbonded(nn.Module):
    """Coulomb + Lennard-Jones over all atom pairs without cutoff, exceptions replacing their pairs.

    Per unordered pair (:func:`unordered_pairs`) U_ij = kq / r + a / r¹² − c / r⁶ with
    kq = k_e q_i q_j, a = 4εσ¹², c = 4εσ⁶ (zero for excluded pairs), so
    ∂U/∂r² = −½ kq/r³ − 6 a/r¹⁴ + 3 c/r⁸.
    """

    def __init__(self, force: openmm.NonbondedForce):
        super().__init__()
        if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
            raise _unsupported(f"NonbondedForce with nonbonded method {force.getNonbondedMethod()} (only NoCutoff)")
        if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets() or force.getNumGlobalParameters():
            raise _unsupported("NonbondedForce with parameter offsets or global parameters")
        n = force.getNumParticles()
        q, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
        for a in range(n):
            qa, sa, ea = force.getParticleParameters(a)
            q[a] = qa.value_in_unit(unit.elementary_charge)
            sig[a] = sa.value_in_unit(unit.nanometer)
            eps[a] = ea.value_in_unit(unit.kilojoule_per_mole)
        qq = np.outer(q, q)
        sigma = 0.5 * (sig[:, None] + sig[None, :])
        epsilon = np.sqrt(np.outer(eps, eps))
        for e in range(force.getNumExceptions()):
            a, b, qp, se, ee = force.getExceptionParameters(e)
            qq[a, b] = qq[b, a] = qp.value_in_unit(unit.elementary_charge**2)
            sigma[a, b] = sigma[b, a] = se.value_in_unit(unit.nanometer)
            epsilon[a, b] = epsilon[b, a] = ee.value_in_unit(unit.kilojoule_per_mole)
        i, j = unordered_pairs(n).numpy()
        self.register_buffer("kq", _column(ONE_4PI_EPS0 * qq[i, j]))
        self.register_buffer("a", _column(4.0 * epsilon[i, j] * sigma[i, j] ** 12))
        self.register_buffer("c", _column(4.0 * epsilon[i, j] * sigma[i, j] ** 6))

    def energy_and_dr2(self, r2: Tensor, inv_r: Tensor) -> tuple[Tensor, Tensor]:
        """U (B,) and ∂U/∂r² (P, B) from the pair r² and 1/r, both (P, B)."""
        inv_r2 = inv_r * inv_r
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        coulomb = self.kq * inv_r
        repulsion = self.a * inv_r6 * inv_r6
        dispersion = self.c * inv_r6
        energy = (coulomb + repulsion - dispersion).sum(0)
        return energy, inv_r2 * (-0.5 * coulomb - 6.0 * repulsion + 3.0 * dispersion)


class OBCGeneralizedBorn(nn.Module):
    r"""OBC generalized Born / surface area solvation energy (Onufriev, Bashford & Case 2004).

    With offset radius ρ_i = R_i − offset, scaled radius s_j = S_j ρ_j (both nm), the HCT pair
    integral over j ≠ i (and r_ij < cutoff if one is set) where r + s_j > ρ_i is

        I_ij = ½ [ 1/L − 1/U + ¼ (r − s_j²/r)(1/U² − 1/L²) + ½ ln(L/U)/r ],
        U = r + s_j,  L = max(ρ_i, |r − s_j|),

    (``GBSAOBCForce`` adds (1/ρ_i − 1/L) when atom i lies entirely inside j's sphere,
    ρ_i < s_j − r; the CustomGBForce does not.) With ψ_i = ρ_i Σ_j I_ij the Born radius is

        B_i = 1 / (1/ρ_i − tanh(α ψ_i − β ψ_i² + γ ψ_i³)/R_i)

    (OBC1: α, β, γ = 0.8, 0, 2.909125; OBC2: 1, 0.8, 4.85). The energy, kJ/mol, is

        U = −½ k_e Σ_{i,j} τ_ij q_i q_j (1/f_ij − [i≠j] c) + Σ_i σ_SA (R_i + r_probe)² (R_i/B_i)⁶,
        f_ij = √(r_ij² + B_i B_j exp(−r_ij²/(4 B_i B_j))),  τ_ij = 1/ε_in − exp(−κ f_ij)/ε_out,

    where the i = j terms are the self energies (f_ii = B_i), the shift c (``energy_shift``) is
    1/r_c with a cutoff r_c (pairs beyond it are dropped) and 0 without, and the second sum is the
    ACE surface-area term (absent if σ_SA = 0). The energy is discontinuous at r_c, as in OpenMM.

    Layout: I_ij runs over the ordered pairs, stacked as (2, P, B) over the unordered pairs
    (direction 0: i < j, direction 1: i > j); the polar sum over the P unordered pairs (both
    orders, hence −k_e) followed by the N self pairs (r = 0, −½ k_e).
    """

    def __init__(
        self,
        charge,
        offset_radius,
        scaled_radius,
        *,
        alpha: float,
        beta: float,
        gamma: float,
        offset: float,
        coulomb: float,
        solute_dielectric: float,
        solvent_dielectric: float,
        kappa: float = 0.0,
        surface_area_energy: float = 0.0,
        probe_radius: float = 0.14,
        cutoff: float | None = None,
        energy_shift: float = 0.0,
        engulfed_correction: bool = False,
    ):
        super().__init__()
        q = torch.as_tensor(charge, dtype=torch.float64)
        rho = torch.as_tensor(offset_radius, dtype=torch.float64)
        s = torch.as_tensor(scaled_radius, dtype=torch.float64)
        n = q.shape[0]
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.kappa = float(kappa)
        self.inv_solute = 1.0 / float(solute_dielectric)
        self.inv_solvent = 1.0 / float(solvent_dielectric)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.has_shift = float(energy_shift) != 0.0
        self.engulfed_correction = bool(engulfed_correction)
        self.has_surface_area = float(surface_area_energy) != 0.0
        i, j = unordered_pairs(n)
        self_pair = torch.arange(n)
        # Born integral over the ordered pairs (i, j), (2, P, 1): ρ_i of their atom i, s_j of their atom j.
        self.register_buffer("ordered_i", torch.cat([i, j]))
        self.register_buffer("rho_i", rho[torch.cat([i, j])].view(2, -1, 1))
        self.register_buffer("s_j", s[torch.cat([j, i])].view(2, -1, 1))
        # Polar pairs: the unordered pairs, then the self pairs (i, i).
        self.register_buffer("polar_i", torch.cat([i, self_pair]))
        self.register_buffer("polar_j", torch.cat([j, self_pair]))
        self.register_buffer("qq", -float(coulomb) * torch.cat([q[i] * q[j], 0.5 * q * q]).unsqueeze(-1))
        self.register_buffer("shift", torch.cat([torch.full((len(i),), float(energy_shift)), torch.zeros(n)]).unsqueeze(-1))
        self.register_buffer("rho", rho.unsqueeze(-1))
        self.register_buffer("radius", (rho + offset).unsqueeze(-1))
        self.register_buffer(
            "sa_prefactor",
            (float(surface_area_energy) * (rho + offset + probe_radius) ** 2 * (rho + offset) ** 6).unsqueeze(-1),
        )

    def _born_integral(self, r2: Tensor, r: Tensor, inv_r: Tensor) -> tuple[Tensor, Tensor]:
        """2 I_ij and k_ij = −4 r² ∂(2 I_ij)/∂r at fixed U, L, both (2, P, B), from r², r, 1/r (P, B).

        With a = 1/L − 1/U and b = 1/L + 1/U (so 1/U² − 1/L² = −ab),
        2I = a − ¼ (r − s²/r) ab + ½ ln(L/U)/r and, with U, L held fixed, k = (r² + s²) ab + 2 ln(L/U);
        the terms from dU/dr and dL/dr cancel, except for an engulfed atom (L = s − r), where they
        add 2/L² to ∂(2I)/∂r, which the GBSAOBCForce correction term cancels in turn. U is floored
        at ρ_i, which makes both zero (U = L = ρ_i) exactly where r + s_j ≤ ρ_i, the pairs the
        integral excludes.
        """
        s, rho = self.s_j, self.rho_i
        r_minus_s = r - s
        upper = torch.maximum(r + s, rho)
        lower = torch.maximum(r_minus_s.abs(), rho)
        inv_u = upper.reciprocal_()
        log_lu = (lower * inv_u).log_()
        inv_l = lower.reciprocal_()
        a = inv_l - inv_u
        ab = a * (inv_l + inv_u)
        term = torch.addcmul(a, r - s * s * inv_r, ab, value=-0.25).addcmul_(inv_r, log_lu, value=0.5)
        k = torch.addcmul(2.0 * log_lu, r2 + s * s, ab)
        # 1/ρ_i − 1/max(s_j − r, ρ_i): 1/ρ_i − 1/L where atom i lies inside j's sphere, else 0.
        engulfed = torch.maximum(r_minus_s.neg_(), rho).reciprocal_().neg_().add_(rho.reciprocal())
        if self.engulfed_correction:
            term.add_(engulfed, alpha=2.0)
        else:
            k.addcmul_(r2 * inv_l * inv_l, engulfed.sign_(), value=-8.0)
        if self.cutoff is not None:
            inside = (r < self.cutoff).to(r.dtype)
            term, k = term * inside, k * inside
        return term, k

    def energy_and_dr2(self, r2: Tensor, inv_r: Tensor) -> tuple[Tensor, Tensor]:
        """U (B,) and ∂U/∂r² (P, B) from the pair r² and 1/r, both (P, B).

        The derivative chain is written out: ∂U/∂r²_ij collects the explicit dependence of f_ij and
        the Born-radius dependence ∂U/∂B_k ∂B_k/∂ψ_k ∂ψ_k/∂r_ij over the two ordered pairs.
        """
        n_pairs, batch = r2.shape
        n_atoms = self.rho.shape[0]
        term, k = self._born_integral(r2, r2 * inv_r, inv_r)
        psi = 0.5 * self.rho * r2.new_zeros(n_atoms, batch).index_add_(0, self.ordered_i, term.view(-1, batch))
        tanh = torch.tanh(psi * (self.alpha - psi * (self.beta - self.gamma * psi)))
        born = 1.0 / (1.0 / self.rho - tanh / self.radius)
        dborn_dpsi = born * born * (1.0 - tanh * tanh) * (self.alpha - psi * (2.0 * self.beta - 3.0 * self.gamma * psi)) / self.radius

        # Polar energy over the unordered and self pairs: f² = r² + B_iB_j e^(−D), D = r²/(4 B_iB_j).
        born_i, born_j = born.index_select(0, self.polar_i), born.index_select(0, self.polar_j)
        bb4 = (4.0 * born).index_select(0, self.polar_i) * born_j
        pair_r2 = nn.functional.pad(r2, (0, 0, 0, n_atoms))
        d = pair_r2 / bb4
        exp_d = torch.exp(-d)
        f2 = torch.addcmul(pair_r2, bb4, exp_d, value=0.25)
        inv_f = torch.rsqrt(f2)
        shifted = inv_f - self.shift if self.has_shift else inv_f
        if self.kappa > 0:
            screen = torch.exp(-self.kappa * f2 * inv_f) * self.inv_solvent
            tau = self.inv_solute - screen
            pair_energy = self.qq * tau * shifted
            de_df2 = 0.5 * self.qq * inv_f * (self.kappa * screen * shifted - tau * inv_f * inv_f)
        else:
            pair_energy = (self.qq * (self.inv_solute - self.inv_solvent)) * shifted
            de_df2 = -0.5 * self.qq * (self.inv_solute - self.inv_solvent) * inv_f / f2
        if self.cutoff is not None:
            inside = nn.functional.pad((r2 < self.cutoff**2).to(r2.dtype), (0, 0, 0, n_atoms), value=1.0)
            pair_energy = pair_energy * inside
            de_df2 = de_df2 * inside
        energy = pair_energy.sum(0)
        # ∂f²/∂B_i = B_j e^(−D)(1 + D); a self pair holds B_i twice.
        h = de_df2 * exp_d
        h.addcmul_(h, d)
        de_dborn = torch.zeros_like(born).index_add_(0, self.polar_i, h * born_j).index_add_(0, self.polar_j, h * born_i)
        if self.has_surface_area:
            surface = self.sa_prefactor / born**6
            energy = energy + surface.sum(0)
            de_dborn = de_dborn - 6.0 * surface / born
        # ∂U/∂r² via the Born radii: ½ r⁻¹ Σ_i ∂U/∂ψ_i ∂ψ_i/∂r = r⁻³ Σ_i (−ρ_i/16 ∂U/∂B_i ∂B_i/∂ψ_i) k_ij
        c = (-0.0625 * self.rho * de_dborn * dborn_dpsi).index_select(0, self.ordered_i).view(2, n_pairs, batch)
        de_dr2 = (c * k).sum(0).mul_(inv_r * inv_r * inv_r)
        return energy, de_dr2.add_(de_df2[:n_pairs]).addcmul_(de_df2[:n_pairs], exp_d[:n_pairs], value=-0.25)

    @classmethod
    def from_gbsaobc_force(cls, force: openmm.GBSAOBCForce) -> "OBCGeneralizedBorn":
        """The native OpenMM OBC force (always OBC2 constants, offset 0.009 nm, probe 0.14 nm)."""
        method = force.getNonbondedMethod()
        if method == openmm.GBSAOBCForce.CutoffPeriodic:
            raise _unsupported("GBSAOBCForce with periodic boundary conditions")
        params = [force.getParticleParameters(a) for a in range(force.getNumParticles())]
        charge = np.array([p[0].value_in_unit(unit.elementary_charge) for p in params])
        radius = np.array([p[1].value_in_unit(unit.nanometer) for p in params])
        scale = np.array([float(p[2]) for p in params])
        offset = 0.009
        rho = radius - offset
        cutoff = None
        if method != openmm.GBSAOBCForce.NoCutoff:
            cutoff = force.getCutoffDistance().value_in_unit(unit.nanometer)
        return cls(
            charge,
            rho,
            scale * rho,
            alpha=1.0,
            beta=0.8,
            gamma=4.85,
            offset=offset,
            coulomb=ONE_4PI_EPS0,
            solute_dielectric=force.getSoluteDielectric(),
            solvent_dielectric=force.getSolventDielectric(),
            surface_area_energy=4.0 * math.pi * force.getSurfaceAreaEnergy().value_in_unit(
                unit.kilojoule_per_mole / unit.nanometer**2
            ),
            cutoff=cutoff,
            energy_shift=0.0 if cutoff is None else 1.0 / cutoff,
            engulfed_correction=True,
        )

    @classmethod
    def from_custom_gb_force(cls, force: openmm.CustomGBForce) -> "OBCGeneralizedBorn":
        """The CustomGBForce of OpenMM's ``customgbforces.GBSAOBC1Force``/``GBSAOBC2Force``.

        The expressions are matched against the known OBC templates; α, β, γ, the offset, the
        dielectrics, κ, k_e, the ACE constants and the cutoff are read out of them, so any model of
        this family (OBC1, OBC2, other α/β/γ) is reproduced and anything else is refused.
        """
        return cls(**_parse_obc_custom_gb(force))

    @property
    def model(self) -> str:
        """``OBC1``, ``OBC2`` or ``OBC(α,β,γ)`` from the tanh coefficients."""
        known = {(0.8, 0.0, 2.909125): "OBC1", (1.0, 0.8, 4.85): "OBC2"}
        abc = (self.alpha, self.beta, self.gamma)
        return known.get(abc, f"OBC{abc}")


_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_OBC_INTEGRAL = (
    "select(step(r+sr2-or1),0.5*(1/L-1/U+0.25*(r-sr2^2/r)*(1/(U^2)-1/(L^2))+0.5*log(L/U)/r),0);"
    "U=r+sr2;L=max(or1,D);D=abs(r-sr2)"
)
_POLY_TERM = re.compile(rf"^(?:{_NUM}\*)?psi(?:\^(\d))?$")


def _split_expression(expression: str) -> tuple[str, dict[str, str]]:
    """Main expression and its ``name=value`` definitions, whitespace removed."""
    parts = [p for p in expression.replace(" ", "").split(";") if p]
    return parts[0], dict(p.split("=", 1) for p in parts[1:])


def _parse_tanh_polynomial(poly: str) -> tuple[float, float, float]:
    """α, β, γ from ``α*psi − β*psi^2 + γ*psi^3`` (any subset, any order, implicit unit coefficients)."""
    coefficients = {1: 0.0, 2: 0.0, 3: 0.0}
    for sign, term in re.findall(r"([-+]?)([^-+]+)", poly):
        match = _POLY_TERM.match(term)
        power = int(match.group(2) or 1) if match else 0
        if power not in coefficients:
            raise _unsupported(f"CustomGBForce Born radius polynomial '{poly}'")
        coefficients[power] += (-1.0 if sign == "-" else 1.0) * float(match.group(1) or 1.0)
    return coefficients[1], -coefficients[2], coefficients[3]


def _parse_obc_custom_gb(force: openmm.CustomGBForce) -> dict:
    """Keyword arguments of :class:`OBCGeneralizedBorn` for an OBC-type CustomGBForce."""

    def refuse(why: str) -> UnsupportedForceError:
        return _unsupported(f"CustomGBForce that is not an OBC GB/SA model ({why})")

    names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
    if names != ["charge", "or", "sr"]:
        raise refuse(f"per-particle parameters {names}")
    if force.getNumGlobalParameters() or force.getNumTabulatedFunctions() or force.getNumExclusions():
        raise refuse("global parameters, tabulated functions or exclusions")
    method = force.getNonbondedMethod()
    if method == openmm.CustomGBForce.CutoffPeriodic:
        raise _unsupported("CustomGBForce with periodic boundary conditions")
    values = [force.getComputedValueParameters(k) for k in range(force.getNumComputedValues())]
    if [v[0] for v in values] != ["I", "B"]:
        raise refuse(f"computed values {[v[0] for v in values]}")
    if values[0][1].replace(" ", "") != _OBC_INTEGRAL or values[0][2] != openmm.CustomGBForce.ParticlePairNoExclusions:
        raise refuse("Born integral I")
    b_main, b_defs = _split_expression(values[1][1])
    b_match = re.fullmatch(r"1/\(1/or-tanh\((.+)\)/radius\)", b_main)
    if not b_match or b_defs.get("psi") != "I*or" or b_defs.get("radius") != "or+offset":
        raise refuse(f"Born radius B = {b_main}")
    alpha, beta, gamma = _parse_tanh_polynomial(b_match.group(1))
    kwargs = dict(alpha=alpha, beta=beta, gamma=gamma, offset=float(b_defs["offset"]), surface_area_energy=0.0)

    coulomb = {}
    for k in range(force.getNumEnergyTerms()):
        expression, kind = force.getEnergyTermParameters(k)
        main, defs = _split_expression(expression)
        screen = r"\(1/soluteDielectric-(1|exp\(-kappa\*[Bf]\))/solventDielectric\)"
        if kind == openmm.CustomGBForce.SingleParticle and (
            m := re.fullmatch(rf"-0\.5\*{_NUM}\*{screen}\*charge\^2/B", main)
        ):
            coulomb["self"] = float(m.group(1))
        elif kind == openmm.CustomGBForce.SingleParticle and (
            m := re.fullmatch(rf"{_NUM}\*\(radius\+{_NUM}\)\^2\*\(radius/B\)\^6", main)
        ):
            if defs.get("radius") != "or+offset":
                raise refuse(f"surface-area term {main}")
            kwargs.update(surface_area_energy=float(m.group(1)), probe_radius=float(m.group(2)))
        elif kind == openmm.CustomGBForce.ParticlePairNoExclusions and (
            m := re.fullmatch(rf"-{_NUM}\*{screen}\*charge1\*charge2(?:/f|\*\(1/f-{_NUM}\))", main)
        ):
            if defs.get("f") != "sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))":
                raise refuse(f"pair distance f = {defs.get('f')}")
            coulomb["pair"] = float(m.group(1))
            kwargs["energy_shift"] = float(m.group(3) or 0.0)
        else:
            raise refuse(f"energy term {main}")
        kwargs.update(
            solute_dielectric=float(defs["soluteDielectric"]),
            solvent_dielectric=float(defs["solventDielectric"]),
            kappa=float(defs.get("kappa", 0.0)),
        )
    if set(coulomb) != {"self", "pair"} or coulomb["self"] != coulomb["pair"]:
        raise refuse("missing or inconsistent polar energy terms")
    params = np.array([force.getParticleParameters(a) for a in range(force.getNumParticles())], dtype=np.float64)
    cutoff = None
    if method == openmm.CustomGBForce.CutoffNonPeriodic:
        cutoff = force.getCutoffDistance().value_in_unit(unit.nanometer)
    return dict(
        charge=params[:, 0],
        offset_radius=params[:, 1],
        scaled_radius=params[:, 2],
        coulomb=coulomb["pair"],
        cutoff=cutoff,
        **kwargs,
    )




class _Energy(torch.autograd.Function):
    """U(x) for autograd: the forward pass computes U and ∂U/∂x together
    (:meth:`TorchForceField.energy_and_gradient`), the backward only scales the stored ∂U/∂x."""

    @staticmethod
    def forward(ctx, x: Tensor, forcefield: "TorchForceField") -> Tensor:
        energy, grad = forcefield.energy_and_gradient(x)
        ctx.save_for_backward(grad)
        return energy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_energy: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_energy[:, None, None], None


_TERM_BUILDERS = {
    openmm.HarmonicBondForce: HarmonicBonds,
    openmm.HarmonicAngleForce: HarmonicAngles,
    openmm.PeriodicTorsionForce: PeriodicTorsions,
    openmm.NonbondedForce: Nonbonded,
    openmm.GBSAOBCForce: OBCGeneralizedBorn.from_gbsaobc_force,
    openmm.CustomGBForce: OBCGeneralizedBorn.from_custom_gb_force,
}
_IGNORED = (openmm.CMMotionRemover,)


class TorchForceField(nn.Module):
    """U(x) in kJ/mol of an ``openmm.System`` for a batch x of shape (B, N, 3) in nm.

    Args:
        system: the OpenMM system (non-periodic, NoCutoff nonbonded).
        positions: reference positions (N, 3) nm used for the self-check against OpenMM;
            ``None`` skips the check.
        dtype: ``torch.float32`` or ``torch.float64``; ``.to(dtype)`` changes it later, and refills the
            parameters from their float64 values read from the System (kept on the CPU, one copy).
        device: torch device; ``.to(device)`` moves it.
        compile: evaluate full chunks with ``torch.compile``d kernels (see the module docstring).

    Raises:
        UnsupportedForceError: the system holds a force the torch backend does not implement.
        ForceFieldMismatchError: the self-check against OpenMM failed.
    """

    def __init__(
        self, system: openmm.System, positions: np.ndarray | None = None, dtype=torch.float64, device="cpu", compile: bool = False
    ):
        super().__init__()
        if system.getNumConstraints():
            raise _unsupported("systems with constraints (build it with constraints=None)")
        terms = {}
        for force in system.getForces():
            if isinstance(force, _IGNORED):
                continue
            builder = _TERM_BUILDERS.get(type(force))
            if builder is None:
                raise _unsupported(type(force).__name__)
            terms[f"{type(force).__name__}_{len(terms)}"] = builder(force)
        self.terms = nn.ModuleDict(terms)
        self.pair_terms = [t for t in terms.values() if hasattr(t, "energy_and_dr2")]
        self.bonded_terms = [t for t in terms.values() if not hasattr(t, "energy_and_dr2")]
        self.n_atoms = system.getNumParticles()
        self.register_buffer("pairs", unordered_pairs(self.n_atoms))
        # An empty floating buffer that .to() / .double() / .cuda() cast and move with the parameter
        # buffers: the working dtype and device are read off it (the ``dtype`` and ``device``
        # properties), so they cannot go stale after a cast. Not persistent: state dicts keep their keys.
        self.register_buffer("_placement", torch.empty(0, dtype=torch.float64), persistent=False)
        # The parameters exactly as read from the System (float64, CPU, outside the buffers): every cast
        # refills the floating buffers from them (see _apply), so a float32 force field cast to float64
        # holds the float64 parameters, not float32-rounded ones (a 1e-7 relative energy error).
        self._exact_parameters = {
            name: b.clone() for name, b in self.named_buffers() if b.is_floating_point() and name != "_placement"
        }
        self.to(dtype=dtype, device=device)
        if torch.device(device).type == "cpu":
            retain_freed_memory()  # else every pass page-faults its temporaries anew (see there)
        # full chunks only: one static shape, one compilation (see the module docstring)
        self._compiled_chunk = CheckedCompile(
            self._chunk_energy_and_gradient, "the force field", self._compiled_disagreement, accepts=lambda y: y.shape[-1] == CHUNK
        ) if compile else None
        if positions is not None:
            check_against_openmm(self, system, positions)

    def _apply(self, fn, recurse=True):
        """The hook of every ``nn.Module`` cast and move (``.to()``, ``.double()``, ``.cuda()``, ...):
        applies ``fn``, then refills each floating parameter buffer from its exact float64 value in the
        new dtype and on the new device."""
        super()._apply(fn, recurse)
        for name, exact in self._exact_parameters.items():
            module_name, _, buffer_name = name.rpartition(".")
            setattr(self.get_submodule(module_name), buffer_name, exact.to(dtype=self.dtype, device=self.device, copy=True))
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The working dtype of the parameter buffers (inputs must have it); follows ``.to()``."""
        return self._placement.dtype

    @property
    def device(self) -> torch.device:
        """The device of the parameter buffers (inputs must be on it); follows ``.to()``."""
        return self._placement.device

    def forward(self, x: Tensor) -> Tensor:
        """Potential energy in kJ/mol, shape (B,), differentiable once with respect to x."""
        return _Energy.apply(x, self)

    def energy_and_forces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(U in kJ/mol of shape (B,), F = −∇U in kJ/(mol nm) of shape (B, N, 3)), detached."""
        energy, grad = self.energy_and_gradient(x)
        return energy, grad.neg_()

    @torch.no_grad()
    def energy_and_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(U (B,) in kJ/mol, ∂U/∂x (B, N, 3) in kJ/(mol nm)) in one pass, chunk by chunk
        (on :data:`~flowcg.threads.FORCEFIELD_THREADS` threads on the CPU)."""
        energy = x.new_empty(x.shape[0])
        grad = torch.empty_like(x)
        with torch_threads(FORCEFIELD_THREADS if x.device.type == "cpu" else None):
            for start in range(0, x.shape[0], CHUNK):
                chunk = slice(start, start + CHUNK)
                energy[chunk], g = self._chunk_pass(x[chunk].permute(1, 2, 0).contiguous())
                grad[chunk] = g.permute(2, 0, 1)
        return energy, grad

    @property
    def compiled(self) -> bool:
        """Whether full chunks go through the compiled kernels."""
        return self._compiled_chunk is not None and self._compiled_chunk.active

    def _chunk_pass(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The compiled kernels for a full chunk (checked against the eager pass on first use), else eager."""
        return self._chunk_energy_and_gradient(y) if self._compiled_chunk is None else self._compiled_chunk(y)

    def _compiled_disagreement(self, compiled: tuple[Tensor, Tensor], eager: tuple[Tensor, Tensor]) -> str | None:
        bad, de, dg = disagreement(compiled[0], eager[0], compiled[1].permute(2, 0, 1), eager[1].permute(2, 0, 1), self.dtype)
        if not bad.any():
            return None
        return f"on {bad.sum()} of {len(bad)} configurations, max |ΔE| = {de.max():.3g} kJ/mol, max |Δ∂U/∂x| = {dg.max():.3g} kJ/(mol nm)"

    def _chunk_energy_and_gradient(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """U (b,) and ∂U/∂y (N, 3, b) of atom-major coordinates y (N, 3, b)."""
        grad = torch.zeros_like(y)
        energy = y.new_zeros(y.shape[-1])
        if self.pair_terms:
            d = y.index_select(0, self.pairs[0]) - y.index_select(0, self.pairs[1])  # x_i − x_j, (P, 3, b)
            r2 = _dot(d, d)
            inv_r = torch.rsqrt(r2)
            de_dr2 = 0
            for term in self.pair_terms:
                e, g = term.energy_and_dr2(r2, inv_r)
                energy += e
                de_dr2 = de_dr2 + g
            f = 2.0 * de_dr2.unsqueeze(1) * d  # ∂U/∂x_i = −∂U/∂x_j = 2 ∂U/∂r²_ij (x_i − x_j)
            grad.index_add_(0, self.pairs[0], f).index_add_(0, self.pairs[1], f, alpha=-1.0)
        for term in self.bonded_terms:
            e, grads = term.energy_and_gradient(y)
            energy += e
            for atoms, g in zip(term.idx.T, grads):
                grad.index_add_(0, atoms, g)
        return energy, grad

#: (|ΔE| absolute kJ/mol, |ΔE| relative, max|ΔF| absolute kJ/(mol nm), max|ΔF| relative to max|F|)
CHECK_TOLERANCES = {torch.float64: (1e-3, 1e-7, 1e-2, 1e-6), torch.float32: (0.05, 1e-5, 1.0, 1e-4)}


def disagreement(energy, ref_energy, forces, ref_forces, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per configuration: (beyond :data:`CHECK_TOLERANCES` of ``dtype``?, |ΔE|, max|ΔF|), energies (B,)
    and forces (B, N, 3) as arrays or tensors; a configuration finite in one set and not in the other
    disagrees, one non-finite in both does not."""
    energy, ref_energy, forces, ref_forces = (
        a.detach().double().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a, dtype=np.float64)
        for a in (energy, ref_energy, forces, ref_forces)
    )
    finite, ref_finite = np.isfinite(energy), np.isfinite(ref_energy)
    both = finite & ref_finite
    de = np.where(both, np.abs(energy - ref_energy), 0.0)
    df = np.where(both, np.nan_to_num(np.abs(forces - ref_forces), nan=np.inf).max(axis=(1, 2)), 0.0)
    e_abs, e_rel, f_abs, f_rel = CHECK_TOLERANCES[dtype]
    bad = (finite != ref_finite) | (de > e_abs + e_rel * np.where(both, np.abs(ref_energy), 0.0))
    bad |= df > f_abs + f_rel * np.where(both, np.nan_to_num(np.abs(ref_forces), nan=0.0).max(axis=(1, 2)), 0.0)
    return bad, de, df


def check_against_openmm(
    forcefield: TorchForceField, system: openmm.System, positions: np.ndarray, n_perturbed: int = 3, seed: int = 0
) -> dict[str, float]:
    """Compare energies and forces with OpenMM's Reference platform; raise on disagreement.

    The configurations are ``positions`` and ``n_perturbed`` copies displaced by 0.005 nm Gaussian
    noise (enough to move every term off its minimum). Returns the worst |ΔE| and max|ΔF|.
    """
    from flowcg.targets.openmm_bridge import OpenMMEvaluator

    rng = np.random.default_rng(seed)
    x = positions[None] + 0.005 * rng.standard_normal((n_perturbed + 1, *positions.shape))
    x[0] = positions
    ref_energy, ref_forces = OpenMMEvaluator(system, platform="Reference").evaluate(x)
    energy, forces = forcefield.energy_and_forces(torch.as_tensor(x, dtype=forcefield.dtype, device=forcefield.device))
    bad, de, df = disagreement(energy, ref_energy, forces, ref_forces, forcefield.dtype)
    if bad.any():
        raise ForceFieldMismatchError(
            f"torch force field ({forcefield.dtype}) disagrees with OpenMM: max |ΔE| = {de.max():.3g} kJ/mol "
            f"(E = {ref_energy.tolist()}), max |ΔF| = {df.max():.3g} kJ/(mol nm); terms: {list(forcefield.terms)}"
        )
    return {"max_abs_energy_error": float(de.max()), "max_abs_force_error": float(df.max())}
