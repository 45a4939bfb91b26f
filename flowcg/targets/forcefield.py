"""A batched, differentiable PyTorch re-implementation of the OpenMM force terms of small molecules.

:class:`TorchForceField` reads the parameters out of an ``openmm.System`` and evaluates the
potential energy U(x) of a batch of configurations x of shape ``(B, N, 3)`` (nm) in kJ/mol,
vectorised over the batch and over the terms. Forces are −∇U by autograd: the bonded terms are
recorded as usual, the pair terms (Coulomb/LJ, GB) enter as one autograd Function whose gradient
is assembled from hand-written ∂U/∂r²_ij in the same pass (see :class:`_PairEnergy`). It runs on any
torch device in float32 or float64; first derivatives only (no double backward).

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
"""

from __future__ import annotations

import math
import re

import numpy as np
import openmm
import torch
from openmm import unit
from torch import Tensor, nn

#: Configurations per chunk of the pair terms: (chunk, N, N) temporaries of a few hundred kB.
PAIR_CHUNK = 128

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


def _float64(values) -> Tensor:
    """Parameters are read in float64; the module is cast to its working dtype once, at the end."""
    return torch.tensor(values, dtype=torch.float64)


def pairwise_squared_distances(x: Tensor) -> Tensor:
    """|x_i − x_j|² for all atom pairs, shape (B, N, N) (nm²); exact zeros on the diagonal."""
    xc = x.transpose(1, 2)  # (B, 3, N): the sum over components runs over an outer axis, vectorised
    d = xc.unsqueeze(-1) - xc.unsqueeze(-2)
    return (d * d).sum(1)


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
    """U = Σ_b ½ k_b (r_b − r₀_b)², k in kJ/(mol nm²), r in nm."""

    def __init__(self, force: openmm.HarmonicBondForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        self.register_buffer("idx", torch.tensor([p[:2] for p in params], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("r0", _float64([p[2].value_in_unit(unit.nanometer) for p in params]))
        self.register_buffer(
            "k", _float64([p[3].value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) for p in params])
        )

    def forward(self, y: Tensor) -> Tensor:
        """U (B,) from atom-major coordinates y (N, 3, B)."""
        p = _gather(y, self.idx)
        d = p[:, 1] - p[:, 0]
        r = _dot(d, d).sqrt()
        return (0.5 * self.k[:, None] * (r - self.r0[:, None]) ** 2).sum(0)


class HarmonicAngles(nn.Module):
    """U = Σ_a ½ k_a (θ_a − θ₀_a)², k in kJ/(mol rad²).

    θ = atan2(|u×v|, u·v) rather than acos(u·v/|u||v|): exact at every angle and with a finite
    gradient at θ = 0, π, where acos's derivative diverges.
    """

    def __init__(self, force: openmm.HarmonicAngleForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        self.register_buffer("idx", torch.tensor([p[:3] for p in params], dtype=torch.long).reshape(-1, 3))
        self.register_buffer("theta0", _float64([p[3].value_in_unit(unit.radian) for p in params]))
        self.register_buffer(
            "k", _float64([p[4].value_in_unit(unit.kilojoule_per_mole / unit.radian**2) for p in params])
        )

    def forward(self, y: Tensor) -> Tensor:
        """U (B,) from atom-major coordinates y (N, 3, B)."""
        p = _gather(y, self.idx)
        u, v = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1]
        w = _cross(u, v)
        theta = torch.atan2(_dot(w, w).sqrt(), _dot(u, v))
        return (0.5 * self.k[:, None] * (theta - self.theta0[:, None]) ** 2).sum(0)


class PeriodicTorsions(nn.Module):
    """U = Σ_t k_t (1 + cos(n_t φ_t − φ₀_t)), k in kJ/mol; φ the IUPAC dihedral in (−π, π]."""

    def __init__(self, force: openmm.PeriodicTorsionForce):
        super().__init__()
        _require_nonperiodic(force)
        params = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        self.register_buffer("idx", torch.tensor([p[:4] for p in params], dtype=torch.long).reshape(-1, 4))
        self.register_buffer("n", _float64([float(p[4]) for p in params]))
        self.register_buffer("phase", _float64([p[5].value_in_unit(unit.radian) for p in params]))
        self.register_buffer("k", _float64([p[6].value_in_unit(unit.kilojoule_per_mole) for p in params]))

    def forward(self, y: Tensor) -> Tensor:
        """U (B,) from atom-major coordinates y (N, 3, B)."""
        p = _gather(y, self.idx)
        b1, b2, b3 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        m1 = _cross(n1, b2)
        # IUPAC φ = atan2(|b2| b1·n2, n1·n2); both arguments times |b2|, using −(n1×b2)·n2 = |b2|² b1·n2,
        # so that the only norm differentiated is |b2| (a bond length, never zero).
        phi = torch.atan2(-_dot(m1, n2), _dot(n1, n2) * _dot(b2, b2).sqrt())
        return (self.k[:, None] * (1.0 + torch.cos(self.n[:, None] * phi - self.phase[:, None]))).sum(0)


class Nonbonded(nn.Module):
    """Coulomb + Lennard-Jones over all atom pairs without cutoff, exceptions replacing their pairs.

    The pair parameters are folded into three symmetric (N, N) matrices so that
    U = ½ Σ_{i≠j} [ kq_ij / r + a_ij / r¹² − c_ij / r⁶ ] with kq = k_e q_i q_j, a = 4εσ¹², c = 4εσ⁶
    (zero on the diagonal and for excluded pairs); the N×N layout shares the distance matrix with
    the GB term and vectorises better than a gathered pair list at this size.
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
        np.fill_diagonal(qq, 0.0)
        np.fill_diagonal(epsilon, 0.0)
        # The ½ of the double sum over i≠j is folded into the coefficients.
        self.register_buffer("kq", torch.tensor(0.5 * ONE_4PI_EPS0 * qq))
        self.register_buffer("a", torch.tensor(0.5 * 4.0 * epsilon * sigma**12))
        self.register_buffer("c", torch.tensor(0.5 * 4.0 * epsilon * sigma**6))
        self.register_buffer("eye", torch.eye(n))

    def energy_and_dr2(self, r2: Tensor) -> tuple[Tensor, Tensor]:
        """U (B,) and ∂U/∂r²_ij (B, N, N) from the squared distance matrix r2 (B, N, N)."""
        inv_r2 = 1.0 / (r2 + self.eye)  # the diagonal (r = 0) carries zero coefficients
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        coulomb = self.kq * inv_r2.sqrt()
        repulsion = self.a * inv_r6 * inv_r6
        dispersion = self.c * inv_r6
        energy = (coulomb + repulsion - dispersion).sum((-1, -2))
        # d(r⁻¹)/dr² = −½ r⁻³, d(r⁻¹²)/dr² = −6 r⁻¹⁴, d(r⁻⁶)/dr² = −3 r⁻⁸
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
        self.inv_solvent = 1.0 / float(solvent_dielectric)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.energy_shift = float(energy_shift)
        self.engulfed_correction = bool(engulfed_correction)
        self.register_buffer("rho", rho)
        self.register_buffer("radius", rho + offset)
        # Per-pair constants of the Born integral: row i holds ρ_i, column j holds s_j.
        self.register_buffer("rho_i", rho[:, None].expand(n, n).clone())
        self.register_buffer("s_j", s[None, :].expand(n, n).clone())
        self.register_buffer("eye", torch.eye(n, dtype=torch.float64))
        # −½ k_e q_i q_j: the ½ makes the full double sum count each unordered pair once.
        self.register_buffer("qq", -0.5 * float(coulomb) * torch.outer(q, q))
        self.inv_solute = 1.0 / float(solute_dielectric)
        self.register_buffer(
            "sa_prefactor", float(surface_area_energy) * (rho + offset + probe_radius) ** 2 * (rho + offset) ** 6
        )
        self.has_surface_area = float(surface_area_energy) != 0.0

    def energy_and_dr2(self, r2: Tensor) -> tuple[Tensor, Tensor]:
        """U (B,) and ∂U/∂r²_ij (B, N, N) from the squared distance matrix r2 (B, N, N).

        The derivative is written out (rather than left to autograd) because this is the hot loop of
        every molecular target: one fused pass reuses the forward intermediates and is several times
        faster than the recorded graph. It is checked against finite differences in the tests.
        With U, L held fixed, dI/dr = ¼(1 + s²/r²)(1/U² − 1/L²) − ½ ln(L/U)/r²; the terms from
        dU/dr and dL/dr cancel, except for an engulfed atom (L = s − r), where they give +2/L², which
        the GBSAOBCForce correction term cancels in turn.
        """
        r = (r2 + self.eye).sqrt()  # unit diagonal keeps 1/r finite; the diagonal is masked below
        inv_r = 1.0 / r
        upper = r + self.s_j
        lower = torch.maximum(self.rho_i, (r - self.s_j).abs())
        inv_u, inv_l = 1.0 / upper, 1.0 / lower
        log_lu = torch.log(lower * inv_u)
        inv_diff = inv_u * inv_u - inv_l * inv_l
        term = inv_l - inv_u + 0.25 * (r - self.s_j * self.s_j * inv_r) * inv_diff + 0.5 * inv_r * log_lu
        dterm_dr = (0.25 * (1.0 + self.s_j * self.s_j * inv_r * inv_r) * inv_diff - 0.5 * log_lu * inv_r * inv_r)
        engulfed = self.rho_i < self.s_j - r
        if self.engulfed_correction:
            term = term + torch.where(engulfed, 2.0 * (1.0 / self.rho_i - inv_l), 0.0)
        else:
            dterm_dr = dterm_dr + torch.where(engulfed, 2.0 * inv_l * inv_l, 0.0)
        active = (upper > self.rho_i) & (self.eye == 0)
        if self.cutoff is not None:
            active = active & (r < self.cutoff)
        psi = 0.5 * self.rho * torch.where(active, term, 0.0).sum(-1)
        tanh = torch.tanh(psi * (self.alpha - psi * (self.beta - self.gamma * psi)))
        born = 1.0 / (1.0 / self.rho - tanh / self.radius)
        dborn_dpsi = born * born * (1.0 - tanh * tanh) * (self.alpha - psi * (2.0 * self.beta - 3.0 * self.gamma * psi)) / self.radius

        # Polar energy, f² = r² + B_iB_j e^(−D), D = r²/(4 B_iB_j).
        bb = born.unsqueeze(-1) * born.unsqueeze(-2)
        d = 0.25 * r2 / bb
        exp_d = torch.exp(-d)
        f2 = r2 + bb * exp_d
        inv_f = torch.rsqrt(f2)
        shifted = inv_f - self.energy_shift * (1.0 - self.eye) if self.energy_shift else inv_f
        if self.kappa > 0:
            screen = torch.exp(-self.kappa * f2 * inv_f) * self.inv_solvent
            tau = self.inv_solute - screen
            de_df = self.qq * (self.kappa * screen * shifted - tau * inv_f * inv_f)
        else:
            tau = self.inv_solute - self.inv_solvent
            de_df = -tau * self.qq * inv_f * inv_f
        pair_energy = self.qq * tau * shifted
        de_df2 = 0.5 * de_df * inv_f
        if self.cutoff is not None:
            inside = (r2 < self.cutoff**2).to(r2.dtype)
            pair_energy = pair_energy * inside
            de_df2 = de_df2 * inside
        energy = pair_energy.sum((-1, -2))
        # ∂U/∂B_k: the symmetric double sum holds B_k in row k and column k, hence the 2.
        de_dborn = 2.0 * (de_df2 * exp_d * (1.0 + d) * born.unsqueeze(-2)).sum(-1)
        if self.has_surface_area:
            surface = self.sa_prefactor / born**6
            energy = energy + surface.sum(-1)
            de_dborn = de_dborn - 6.0 * surface / born
        de_dr = (0.5 * self.rho * de_dborn * dborn_dpsi).unsqueeze(-1) * torch.where(active, dterm_dr, 0.0)
        return energy, de_df2 * (1.0 - 0.25 * exp_d) + 0.5 * de_dr * inv_r

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


class _PairEnergy(torch.autograd.Function):
    """Σ of pair terms U(r²) with its gradient assembled in the same pass from ∂U/∂r²_ij.

    With G = ∂U/∂r² (not necessarily symmetric) and S = G + Gᵀ,
    ∂U/∂x_i = 2 Σ_j S_ij (x_i − x_j) = 2 (rowsum(S)_i x_i − (S x)_i), a single batched matmul.
    Coordinates are centred first so that the two products do not cancel in float32. The batch is
    processed in chunks of ``PAIR_CHUNK`` configurations so that the (chunk, N, N) temporaries stay
    in the CPU cache; only the (B, N, 3) gradient is kept for backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, *terms) -> Tensor:
        x = x - x.mean(dim=1, keepdim=True)
        energy = x.new_empty(x.shape[0])
        grad = x.new_empty(x.shape)
        for start in range(0, x.shape[0], PAIR_CHUNK):
            xc = x[start : start + PAIR_CHUNK]
            r2 = pairwise_squared_distances(xc)
            parts = [term.energy_and_dr2(r2) for term in terms]
            energy[start : start + PAIR_CHUNK] = sum(e for e, _ in parts)
            de_dr2 = sum(g for _, g in parts)
            sym = de_dr2 + de_dr2.transpose(-1, -2)
            grad[start : start + PAIR_CHUNK] = 2.0 * (sym.sum(-1, keepdim=True) * xc - sym @ xc)
        ctx.save_for_backward(grad)
        return energy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_energy: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_energy[:, None, None], *[None] * (len(ctx.needs_input_grad) - 1))


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
        dtype: ``torch.float32`` or ``torch.float64``.
        device: torch device.

    Raises:
        UnsupportedForceError: the system holds a force the torch backend does not implement.
        ForceFieldMismatchError: the self-check against OpenMM failed.
    """

    def __init__(self, system: openmm.System, positions: np.ndarray | None = None, dtype=torch.float64, device="cpu"):
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
        self.to(dtype=dtype, device=device)
        self.dtype = dtype
        if positions is not None:
            check_against_openmm(self, system, positions)

    def forward(self, x: Tensor) -> Tensor:
        """Potential energy in kJ/mol, shape (B,)."""
        energy = _PairEnergy.apply(x, *self.pair_terms) if self.pair_terms else x.new_zeros(x.shape[0])
        y = x.permute(1, 2, 0).contiguous()  # atom-major (N, 3, B) for the bonded terms' gathers
        return energy + sum(term(y) for term in self.bonded_terms)

    def energy_and_forces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(U in kJ/mol of shape (B,), F = −∇U in kJ/(mol nm) of shape (B, N, 3)), detached."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            energy = self(x)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), -grad


#: (|ΔE| absolute kJ/mol, |ΔE| relative, max|ΔF| absolute kJ/(mol nm), max|ΔF| relative to max|F|)
CHECK_TOLERANCES = {torch.float64: (1e-3, 1e-7, 1e-2, 1e-6), torch.float32: (0.05, 1e-5, 1.0, 1e-4)}


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
    device = next(forcefield.buffers()).device
    energy, forces = forcefield.energy_and_forces(torch.as_tensor(x, dtype=forcefield.dtype, device=device))
    energy, forces = energy.double().cpu().numpy(), forces.double().cpu().numpy()
    de = np.abs(energy - ref_energy)
    df = np.abs(forces - ref_forces).max(axis=(1, 2))
    e_abs, e_rel, f_abs, f_rel = CHECK_TOLERANCES[forcefield.dtype]
    bad_e = de > e_abs + e_rel * np.abs(ref_energy)
    bad_f = df > f_abs + f_rel * np.abs(ref_forces).max(axis=(1, 2))
    if bad_e.any() or bad_f.any():
        raise ForceFieldMismatchError(
            f"torch force field ({forcefield.dtype}) disagrees with OpenMM: max |ΔE| = {de.max():.3g} kJ/mol "
            f"(E = {ref_energy.tolist()}), max |ΔF| = {df.max():.3g} kJ/(mol nm); terms: {list(forcefield.terms)}"
        )
    return {"max_abs_energy_error": float(de.max()), "max_abs_force_error": float(df.max())}
