"""CGSchNet: a SchNet energy U(X) over coarse-grained bead positions, forces by autograd.

Architecture (Schütt et al. 2018; as a CG potential, Husic et al. 2020). Bead i starts from a
learned embedding h_i⁰ = E[type_i] ∈ R^hidden. Each of ``n_interactions`` blocks updates

    v_i = φ_out( Σ_{j≠i} W(d_ij) ⊙ (A h_j) ),     h_i ← h_i + v_i,

with the continuous filter W(d) = φ_filter(e(d)) · f_c(d) built from the Gaussian radial basis

    e_k(d) = exp(−(d − μ_k)² / (2 Δ²)),  μ_k evenly spaced on [0, cutoff] nm, Δ their spacing,

and the smooth cosine envelope f_c(d) = ½ (cos(π d / cutoff) + 1) for d < cutoff, 0 beyond, so
that the energy and its forces are continuous as a pair leaves the cutoff. All bead pairs
interact (a finite molecule, no periodic boundaries). The energy (kJ/mol) is an atom-wise MLP
summed over beads, plus an optional physical prior (e.g. :mod:`flowcg.cg.prior`):

    U(X) = Σ_i MLP(h_i) + U_prior(X).

It depends on X only through distances, so it is invariant to rotations, translations and
reflections, and to any permutation of beads that permutes their types alike. Forces are
F = −∂U/∂X (kJ/mol/nm); force matching differentiates through them (``create_graph``).

With ``n_interactions=0`` the network is switched off (U = U_prior): the baseline that says what
the labels add beyond a prior fitted without them (a readout of the embeddings alone would be a
constant, with no force).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcg.errors import ConfigError

__all__ = ["CGSchNet", "GaussianRBF", "ShiftedSoftplus", "committee_forces", "cosine_cutoff"]


class ShiftedSoftplus(nn.Module):
    """ssp(x) = softplus(x) − log 2: smooth, and zero at x = 0 as in SchNet."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x) - math.log(2.0)


def _activation(name: str) -> nn.Module:
    if name == "ssp":
        return ShiftedSoftplus()
    if name == "silu":
        return nn.SiLU()
    raise ConfigError(f"activation must be 'ssp' or 'silu', got '{name}'")


def cosine_cutoff(d: Tensor, cutoff: float) -> Tensor:
    """½ (cos(π d / cutoff) + 1) for d < cutoff (nm), else 0."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(math.pi * d / cutoff) + 1.0), torch.zeros_like(d))


class GaussianRBF(nn.Module):
    """Gaussian expansion of distances (nm) on ``n_rbf`` centres evenly spaced in [0, cutoff]."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        if n_rbf < 2 or cutoff <= 0:
            raise ConfigError(f"need n_rbf ≥ 2 and cutoff > 0 nm, got n_rbf={n_rbf}, cutoff={cutoff}")
        centres = torch.linspace(0.0, cutoff, n_rbf)
        self.register_buffer("centres", centres)
        self.gamma = 0.5 / float(centres[1] - centres[0]) ** 2  # width = spacing, in nm⁻²

    def forward(self, d: Tensor) -> Tensor:
        """(...,) distances → (..., n_rbf)."""
        return torch.exp(-self.gamma * (d[..., None] - self.centres) ** 2)


class Interaction(nn.Module):
    """One SchNet interaction block: continuous-filter convolution + atom-wise layers."""

    def __init__(self, hidden: int, n_filters: int, n_rbf: int, activation: str):
        super().__init__()
        self.filter_net = nn.Sequential(
            nn.Linear(n_rbf, n_filters), _activation(activation), nn.Linear(n_filters, n_filters)
        )
        self.in2f = nn.Linear(hidden, n_filters, bias=False)
        self.f2out = nn.Sequential(nn.Linear(n_filters, hidden), _activation(activation), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, rbf: Tensor, envelope: Tensor) -> Tensor:
        """Residual update v (B, n, hidden) from features h (B, n, hidden), rbf (B, n, n, n_rbf), envelope (B, n, n)."""
        w = self.filter_net(rbf) * envelope[..., None]  # (B, n, n, n_filters), zero on the diagonal
        messages = torch.einsum("bijf,bjf->bif", w, self.in2f(h))
        return self.f2out(messages)


class CGSchNet(nn.Module):
    """SchNet energy (kJ/mol) of CG frames X (B, n_beads, 3) in nm.

    Args:
        bead_types: (n_beads,) integer type of each bead (e.g. :attr:`CGMapping.bead_types`).
        n_types: size of the embedding table (default: max type + 1).
        hidden: feature width per bead.
        n_filters: width of the continuous filters.
        n_rbf: number of Gaussian radial basis functions.
        cutoff: interaction cutoff in nm (pairs beyond it do not interact through the network).
        n_interactions: number of interaction blocks; 0 = no network, the prior alone.
        activation: ``"ssp"`` (shifted softplus) or ``"silu"``.
        prior: optional module mapping X (B, n, 3) to an energy (B,) in kJ/mol, added to U.
    """

    def __init__(
        self,
        bead_types: Sequence[int] | Tensor,
        n_types: int | None = None,
        hidden: int = 64,
        n_filters: int = 64,
        n_rbf: int = 32,
        cutoff: float = 1.2,
        n_interactions: int = 3,
        activation: str = "ssp",
        prior: nn.Module | None = None,
    ):
        super().__init__()
        types = torch.as_tensor(bead_types, dtype=torch.long)
        if types.ndim != 1 or types.numel() < 2 or types.min() < 0:
            raise ConfigError(f"bead_types must be ≥ 2 non-negative integers, got {types.tolist()}")
        n_types = int(types.max()) + 1 if n_types is None else n_types
        if n_types <= int(types.max()):
            raise ConfigError(f"n_types={n_types} but bead type {int(types.max())} occurs")
        if n_interactions < 0 or (n_interactions == 0 and prior is None):
            raise ConfigError(f"n_interactions must be ≥ 1, or 0 with a prior (the prior alone), got {n_interactions}")
        self.register_buffer("bead_types", types)
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(n_types, hidden)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.interactions = nn.ModuleList(Interaction(hidden, n_filters, n_rbf, activation) for _ in range(n_interactions))
        self.readout = nn.Sequential(nn.Linear(hidden, hidden // 2), _activation(activation), nn.Linear(hidden // 2, 1))
        self.prior = prior

    @property
    def n_beads(self) -> int:
        return self.bead_types.numel()

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype (positions and forces are handled in it)."""
        return next(self.parameters()).dtype

    @property
    def has_network(self) -> bool:
        """False for ``n_interactions=0``: U is the prior alone."""
        return len(self.interactions) > 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that shape U: all of them, or only the prior's (learned dihedrals) without a network."""
        modules = [self] if self.has_network else [self.prior]
        return [p for module in modules for p in module.parameters() if p.requires_grad]

    def network_energy(self, x: Tensor, bead_types: Tensor | None = None) -> Tensor:
        """The learned part of U (kJ/mol), shape (B,), without the prior."""
        types = self.bead_types if bead_types is None else bead_types
        if x.ndim != 3 or x.shape[1:] != (types.numel(), 3):
            raise ValueError(f"expected positions (B, {types.numel()}, 3), got {tuple(x.shape)}")
        if not self.has_network:
            return x.new_zeros(x.shape[0])
        n = x.shape[1]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)
        diff = x[:, :, None, :] - x[:, None, :, :]
        d2 = (diff * diff).sum(-1)
        # sqrt has an infinite derivative at 0: feed the diagonal a dummy 1 and mask it out below.
        d = torch.sqrt(torch.where(off_diagonal, d2, torch.ones_like(d2)))
        envelope = cosine_cutoff(d, self.cutoff) * off_diagonal
        rbf = self.rbf(d)
        h = self.embedding(types).expand(x.shape[0], -1, -1)
        for interaction in self.interactions:
            h = h + interaction(h, rbf, envelope)
        return self.readout(h).squeeze(-1).sum(-1)

    def forward(self, x: Tensor, bead_types: Tensor | None = None) -> Tensor:
        """U(X) in kJ/mol, shape (B,); ``bead_types`` overrides the stored types (same length)."""
        energy = self.network_energy(x, bead_types)
        if self.prior is not None:
            energy = energy + self.prior(x)
        return energy

    def energy_and_forces(self, x: Tensor, create_graph: bool | None = None) -> tuple[Tensor, Tensor]:
        """U (B,) kJ/mol and F = −∂U/∂X (B, n, 3) kJ/mol/nm.

        ``create_graph`` (default: ``self.training``) keeps the graph of F so that a force-matching
        loss can be differentiated with respect to the parameters. Works under ``torch.no_grad``.
        """
        create_graph = self.training if create_graph is None else create_graph
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            energy = self(x)
            (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
        if not create_graph:
            energy = energy.detach()
        return energy, -grad

    def forces(self, x: Tensor, create_graph: bool | None = None) -> Tensor:
        """F = −∂U/∂X (B, n, 3) in kJ/mol/nm (see :meth:`energy_and_forces`)."""
        return self.energy_and_forces(x, create_graph)[1]


def committee_forces(models: Sequence[CGSchNet], x: Tensor) -> Tensor:
    """The committee's mean force (B, n, 3) in kJ/mol/nm at CG frames x: what its CG MD runs on, and what
    its evaluations score (no graph kept)."""
    return torch.stack([m.forces(x, create_graph=False) for m in models]).mean(0)
