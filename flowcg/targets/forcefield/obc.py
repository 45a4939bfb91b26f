"""The OBC generalized-Born implicit solvent: ``GBSAOBCForce`` and the ``CustomGBForce`` that
``AmberPrmtopFile``/``ForceField`` build for OBC1 and OBC2 (math in :class:`OBCGeneralizedBorn`)."""

from __future__ import annotations

import math
import re

import numpy as np
import openmm
import torch
from openmm import unit
from torch import Tensor, nn

from flowcg.targets.forcefield.common import ONE_4PI_EPS0, UnsupportedForceError, _unsupported, unordered_pairs


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
