"""Internal coordinates: a bijection between Cartesian frames and a Z-matrix.

A molecule of N atoms is placed atom by atom in Z-matrix order. Row k of the Z-matrix is
``(atom, bond_ref, angle_ref, torsion_ref)``: ``atom`` sits at distance r from ``bond_ref``, at
bond angle θ = ∠(atom, bond_ref, angle_ref) and at dihedral τ = dihedral(atom, bond_ref,
angle_ref, torsion_ref), all references being placed earlier. The internal-coordinate vector
(3N − 6 entries) is grouped by kind, each group in placement order::

    [ r_1 … r_{N−1} | θ_2 … θ_{N−1} | τ_3 … τ_{N−1} ]   (nm | rad in [0, π] | rad in (−π, π])

Rigid-body convention (the 6 removed degrees of freedom). The first three Z-matrix atoms
a0, a1, a2 (for peptides N, CA, C of the first non-terminal residue) fix the frame: a0 at
the origin, a1 on the +x axis, a2 in the xy plane with y > 0. This is a proper rotation, so
chirality is preserved. The free Cartesian coordinates are then x(a1); x, y(a2); and all
three coordinates of every later atom: 3N − 6 numbers, in one-to-one correspondence with
the internal coordinates on the domain r > 0, θ ∈ (0, π), τ ∈ (−π, π].

Jacobian. Each atom depends only on its own internal coordinates and on atoms placed before
it, so the Jacobian of internal → free Cartesian is block-triangular and

    log|det J_forward| = Σ_{k ≥ 2} log r_k + Σ_{k ≥ 3} (log r_k + log|sin θ_k|),

(a1: dx = dr, factor 1; a2: polar coordinates in the plane, factor r; later atoms: spherical
coordinates around the bond reference, factor r² sin θ).

cartesian_log_density_note. If a flow has density q_ic over internal coordinates, the density
of the Cartesian frames it produces, with the rigid-body DOF fixed as above, is

    log q(x) = log q_ic(ic(x)) − log|det J_forward(ic(x))|
             = log q_ic(ic(x)) + log|det J_inverse(x)|,

and the importance weight against p(x) ∝ exp(−βU(x)) on the same reduced space is
log w = −βU(x) − log q(x). (U depends only on internal coordinates, so fixing the frame loses
nothing; the constant rigid-body volume cancels in self-normalised weights.)

Constrained bonds (``constraints``: (i, j, length) triples, e.g. OpenMM's HBonds). A bond whose
length is fixed is not a degree of freedom: it is left out of the vector, which then has
3N − 6 − n_c entries (the same grouping and order, the fixed bonds skipped), and :meth:`forward`
places the atom at the constraint length. The map then parameterises the constrained manifold,
and its log-det is the formula above with those r_k at their constraint lengths: the density of
x with respect to Π_c δ(r_c(x) − r_c⁰) dx, the Cartesian measure restricted to the constraints,
which is how the published Boltzmann generators on constrained peptides define their target
(bgflow's internal-coordinate map with fixed bond lengths). Every constrained pair must be a
Z-matrix bond (X–H bonds always are: a hydrogen is a leaf placed from its heavy atom).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import mdtraj as md
import numpy as np
import torch
from mdtraj.geometry.dihedral import indices_phi, indices_psi
from nflows.transforms.base import Transform
from torch import Tensor

from flowcg.coordinates.backbone import backbone_torsion_pairs
from flowcg.coordinates.bonds import bonded_neighbours
from flowcg.coordinates.geometry import bond_angle, dihedral, distance
from flowcg.errors import ConfigError

__all__ = ["InternalCoordinateTransform", "zmatrix_from_topology", "validate_zmatrix", "canonicalize"]


def validate_zmatrix(zmatrix, n_atoms: int | None = None) -> np.ndarray:
    """Check a Z-matrix and return it as an int64 array of shape (N, 4), −1 for unused refs.

    Rows must place every atom exactly once; row k ≥ 1 needs a bond reference, k ≥ 2 an angle
    reference, k ≥ 3 a torsion reference, all distinct and placed in earlier rows. Row 2 must
    be bonded to a0 or a1 with the other as angle reference, so the first three atoms form the
    frame described in the module docstring.
    """
    z = np.asarray(zmatrix, dtype=np.int64)
    if z.ndim != 2 or z.shape[1] != 4 or z.shape[0] < 3:
        raise ValueError(f"Z-matrix must have shape (N >= 3, 4), got {z.shape}")
    n = z.shape[0] if n_atoms is None else n_atoms
    if sorted(z[:, 0].tolist()) != list(range(n)):
        raise ValueError("Z-matrix must place every atom 0..N-1 exactly once")
    rank = {int(a): k for k, a in enumerate(z[:, 0])}
    for k, row in enumerate(z):
        refs = [int(r) for r in row[1 : 1 + min(k, 3)]]
        if any(r < 0 for r in refs) or any(r >= 0 for r in row[1 + min(k, 3) :]):
            raise ValueError(f"row {k} ({row.tolist()}) must have exactly {min(k, 3)} references")
        if len(set(refs + [int(row[0])])) != len(refs) + 1:
            raise ValueError(f"row {k} ({row.tolist()}) repeats an atom")
        if any(rank[r] >= k for r in refs):
            raise ValueError(f"row {k} ({row.tolist()}) references an atom placed later")
    if {int(z[2, 1]), int(z[2, 2])} != {int(z[0, 0]), int(z[1, 0])}:
        raise ValueError("row 2 must use the first two atoms as bond and angle references")
    return z


def _default_root(topology: md.Topology, neighbours: list[list[int]], heavy: np.ndarray) -> tuple[int, int, int]:
    """N, CA, C of the first residue that has all three (peptides); else a central heavy chain.

    For peptides this makes the neighbouring φ and ψ atoms land on torsion coordinates (see
    :func:`zmatrix_from_topology`) and matches the Embedded-physics frame (N origin, CA axis,
    C plane).
    """
    for residue in topology.residues:
        names = {atom.name: atom.index for atom in residue.atoms}
        if {"N", "CA", "C"} <= names.keys():
            return names["N"], names["CA"], names["C"]
    # Generic molecule: the heavy atom of least eccentricity, its best-connected heavy
    # neighbour, and a further neighbour; a central frame keeps lever arms short.
    candidates = [a for a in range(len(neighbours)) if heavy[a]] or list(range(len(neighbours)))

    def eccentricity(start: int) -> int:
        depth = {start: 0}
        queue = deque([start])
        while queue:
            a = queue.popleft()
            for b in neighbours[a]:
                if b not in depth:
                    depth[b] = depth[a] + 1
                    queue.append(b)
        return max(depth.values())

    a0 = min(candidates, key=lambda a: (eccentricity(a), -len(neighbours[a]), a))
    a1 = max(neighbours[a0], key=lambda a: (heavy[a], len(neighbours[a]), -a))
    third = [a for a in neighbours[a1] if a != a0] or [a for a in neighbours[a0] if a != a1]
    if not third:
        raise ConfigError("molecule needs a chain of three bonded atoms to define the frame")
    a2 = max(third, key=lambda a: (heavy[a], len(neighbours[a]), -a))
    return a0, a1, a2


def zmatrix_from_topology(topology: md.Topology, root: tuple[int, int, int] | None = None) -> np.ndarray:
    """Build a Z-matrix from the bond graph of ``topology``.

    Atoms are placed breadth-first from the three ``root`` atoms (default: N, CA, C of the
    first amino-acid residue): heavy neighbours before hydrogens, and among heavy ones those
    with more heavy neighbours first (the chain continues before its side groups). Each atom
    X bonded to an already placed B takes as angle reference A the best placed neighbour of
    B (heavy, then earliest placed). Its torsion reference T is

    * another placed neighbour of B when B already has two placed neighbours: an *improper*
      torsion X–B–A–T, stiff (≈ ±120° at tetrahedral centres, ≈ 180° at planar ones) and
      with its sign fixing the handedness at B, so chirality is a coordinate, not a
      correlation the flow must learn;
    * otherwise a placed neighbour of A: a *proper*, freely rotating torsion.

    So only the first substituent around each bond carries the rotation and every other is
    placed relative to it. For a dipeptide the preceding C gets C–N–CA–C = φ and the
    following N gets N–C–CA–N = ψ; each methyl has one rotor torsion.
    """
    n = topology.n_atoms
    neighbours = bonded_neighbours(topology)
    heavy = np.array([atom.element is not None and atom.element.atomic_number > 1 for atom in topology.atoms])
    heavy_degree = [sum(bool(heavy[b]) for b in neighbours[a]) for a in range(n)]
    root = tuple(int(a) for a in (root if root is not None else _default_root(topology, neighbours, heavy)))
    chained = root[2] in neighbours[root[1]] or root[2] in neighbours[root[0]]
    if root[1] not in neighbours[root[0]] or not chained:
        raise ConfigError(f"root atoms {root} must form a bonded chain")

    rank = {a: k for k, a in enumerate(root)}

    def best(candidates):
        return min(candidates, key=lambda a: (not heavy[a], rank[a]))

    bond_ref_of_root2 = root[1] if root[2] in neighbours[root[1]] else root[0]
    rows = [
        (root[0], -1, -1, -1),
        (root[1], root[0], -1, -1),
        (root[2], bond_ref_of_root2, root[0] if bond_ref_of_root2 == root[1] else root[1], -1),
    ]
    order = list(root)
    cursor = 0
    while cursor < len(order):
        b = order[cursor]
        cursor += 1
        for x in sorted(neighbours[b], key=lambda a: (not heavy[a], -heavy_degree[a], a)):
            if x in rank:
                continue
            a = best([c for c in neighbours[b] if c in rank and c != x])
            improper = [c for c in neighbours[b] if c in rank and c not in (a, x)]
            proper = [c for c in neighbours[a] if c in rank and c not in (b, x)]
            if not proper and not improper:
                raise ConfigError(f"atom {x}: no placed atom available as torsion reference")
            rank[x] = len(order)
            order.append(x)
            rows.append((x, b, a, best(improper or proper)))
    if len(order) != n:
        missing = sorted(set(range(n)) - set(order))
        raise ConfigError(f"bond graph is not connected; atoms {missing[:10]} are unreachable from {root}")
    return validate_zmatrix(rows, n)


def canonicalize(x: Tensor, frame_atoms: tuple[int, int, int]) -> Tensor:
    """Remove rigid-body motion from frames x (B, N, 3): a0 → origin, a1 → +x axis, a2 → xy plane, y > 0.

    A proper rotation (det +1), so mirror images stay mirror images.
    """
    a0, a1, a2 = frame_atoms
    shifted = x - x[:, a0 : a0 + 1]
    e1 = shifted[:, a1] / torch.linalg.vector_norm(shifted[:, a1], dim=-1, keepdim=True)
    v = shifted[:, a2] - (shifted[:, a2] * e1).sum(-1, keepdim=True) * e1
    e2 = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    e3 = torch.cross(e1, e2, dim=-1)
    rotation = torch.stack([e1, e2, e3], dim=-1)  # columns are the new axes
    return shifted @ rotation


class InternalCoordinateTransform(Transform):
    """nflows Transform: internal coordinates (B, 3N−6) ↔ Cartesian frames (B, N, 3) in nm.

    ``forward(ic)`` returns (x, log|det J_forward|) and ``inverse(x)`` returns
    (ic, log|det J_inverse|) = (ic, −log|det J_forward(ic)|); see the module docstring for the
    frame convention, the Jacobian and how to turn a flow density into a Cartesian one.
    ``inverse`` accepts frames in any orientation (internal coordinates ignore rigid motion).

    Attributes:
        n_atoms: N.
        dim: 3N − 6.
        zmatrix: (N, 4) long buffer, rows (atom, bond_ref, angle_ref, torsion_ref).
        kind: per coordinate "bond" | "angle" | "torsion".
        atom_indices: per coordinate the atoms defining it, e.g. (x, b, a, t) for a torsion.
        periodic_mask: bool buffer (3N − 6,), True for torsions.
        improper_mask: bool buffer (3N − 6,), True for improper torsions X–B–A–T, those whose
            T is bonded to B (stiff; see :func:`zmatrix_from_topology`). The rest of the
            torsions are proper (free rotors).
        phi_index, psi_index: position of the backbone φ / ψ torsion in the vector, when the
            topology has exactly one φ and one ψ that appear as torsion coordinates; else None.
        backbone_indices: positions of every residue's φ and ψ (φ₁, ψ₁, φ₂, ψ₂, …; residues with
            both as torsion coordinates, paired by their CA), empty without a topology.
        fixed_bonds: the constrained bonds left out of the vector, as (atom, bond_ref, length nm).
        full_dim: 3N − 6, the vector's length with the fixed bonds in it.
    """

    def __init__(self, zmatrix, topology: md.Topology | None = None, constraints: Sequence[tuple[int, int, float]] = ()):
        super().__init__()
        z = validate_zmatrix(zmatrix, None if topology is None else topology.n_atoms)
        self.n_atoms = z.shape[0]
        self.full_dim = 3 * self.n_atoms - 6
        self.register_buffer("zmatrix", torch.as_tensor(z))
        self.frame_atoms = tuple(int(a) for a in z[:3, 0])

        n = self.n_atoms
        kind = ["bond"] * (n - 1) + ["angle"] * (n - 2) + ["torsion"] * (n - 3)
        atom_indices = (
            [tuple(int(a) for a in z[k, :2]) for k in range(1, n)]
            + [tuple(int(a) for a in z[k, :3]) for k in range(2, n)]
            + [tuple(int(a) for a in z[k, :4]) for k in range(3, n)]
        )
        zmatrix_bonds = {frozenset(int(a) for a in z[k, :2]) for k in range(1, n)}
        improper = [False] * (2 * n - 3) + [frozenset((int(z[k, 1]), int(z[k, 3]))) in zmatrix_bonds for k in range(3, n)]

        fixed = self._fixed_bond_coordinates(z, constraints)
        free = [c for c in range(self.full_dim) if c not in fixed]
        self.dim = len(free)
        self.fixed_bonds = tuple((*atom_indices[c], fixed[c]) for c in sorted(fixed))
        self.kind = [kind[c] for c in free]
        self.atom_indices = [atom_indices[c] for c in free]
        self.register_buffer("periodic_mask", torch.tensor([k == "torsion" for k in self.kind]))
        self.register_buffer("improper_mask", torch.tensor([improper[c] for c in free]))
        # The full vector is cat([free coordinates, fixed lengths])[:, _assembly]. Derived from the
        # constraints (the target's), so not saved with a model: older model files load unchanged.
        self.register_buffer("_free_index", torch.tensor(free, dtype=torch.long), persistent=False)
        self.register_buffer("_fixed_lengths", torch.tensor([fixed[c] for c in sorted(fixed)], dtype=torch.float64), persistent=False)
        self.register_buffer("_assembly", torch.as_tensor(np.argsort(free + sorted(fixed)), dtype=torch.long), persistent=False)

        # Rows 3.. grouped into levels whose references all lie in earlier levels, so each level
        # is placed in one batched NeRF step (≈ graph depth steps instead of N).
        level = {int(a): 0 for a in z[:3, 0]}
        for row in z[3:]:
            level[int(row[0])] = 1 + max(level[int(r)] for r in row[1:])
        rows = sorted(range(3, n), key=lambda k: level[int(z[k, 0])])
        self.register_buffer("_level_rows", torch.as_tensor(rows, dtype=torch.long))
        sizes = np.bincount([level[int(z[k, 0])] for k in rows])
        bounds = np.concatenate([[0], np.cumsum(sizes[sizes > 0])])
        self._level_bounds = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

        self.phi_index = self.psi_index = None
        self.backbone_indices: list[int] = []
        if topology is not None:
            self.phi_index = self._find_torsion(indices_phi(topology))
            self.psi_index = self._find_torsion(indices_psi(topology))
            for quads in backbone_torsion_pairs(topology):
                pair = [self._find_torsion(quad[None]) for quad in quads]
                if None not in pair:
                    self.backbone_indices += pair

    @classmethod
    def from_topology(
        cls, topology: md.Topology, root: tuple[int, int, int] | None = None, constraints: Sequence[tuple[int, int, float]] = ()
    ) -> "InternalCoordinateTransform":
        """Transform with the Z-matrix of :func:`zmatrix_from_topology` (``constraints``: see the class)."""
        return cls(zmatrix_from_topology(topology, root), topology, constraints)

    @staticmethod
    def _fixed_bond_coordinates(z: np.ndarray, constraints) -> dict[int, float]:
        """{position of the bond coordinate in the full vector: length nm} for each constrained pair."""
        bond_coordinate = {frozenset((int(z[k, 0]), int(z[k, 1]))): k - 1 for k in range(1, z.shape[0])}
        fixed = {}
        for i, j, length in constraints:
            position = bond_coordinate.get(frozenset((int(i), int(j))))
            if position is None:
                raise ConfigError(f"constraint between atoms {i} and {j} is not a bond of the Z-matrix; only bond lengths can be fixed")
            if not length > 0:
                raise ConfigError(f"constraint between atoms {i} and {j} has length {length} nm; it must be > 0")
            fixed[position] = float(length)
        return fixed

    def full(self, ic: Tensor) -> Tensor:
        """The (B, 3N − 6) vector of ``ic`` (B, dim) with the fixed bond lengths put back in place."""
        if not self.fixed_bonds:
            return ic
        fixed = self._fixed_lengths.to(ic.dtype).expand(ic.shape[0], -1)
        return torch.cat([ic, fixed], dim=1)[:, self._assembly]

    def _find_torsion(self, quads: np.ndarray) -> int | None:
        """Index of the torsion coordinate over the single quadruple in ``quads`` (either direction)."""
        if len(quads) != 1:
            return None
        wanted = {tuple(int(a) for a in quads[0]), tuple(int(a) for a in quads[0][::-1])}
        hits = [i for i, atoms in enumerate(self.atom_indices) if len(atoms) == 4 and atoms in wanted]
        return hits[0] if hits else None

    @property
    def rotor_mask(self) -> Tensor:
        """bool (3N − 6,), True for the proper torsions: the free rotors (torsions that are not impropers)."""
        return self.periodic_mask & ~self.improper_mask

    def split(self, full_ic: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Bonds (B, N−1), angles (B, N−2), torsions (B, N−3) of a full (B, 3N − 6) batch (:meth:`full`)."""
        n = self.n_atoms
        return full_ic[:, : n - 1], full_ic[:, n - 1 : 2 * n - 3], full_ic[:, 2 * n - 3 :]

    def log_det_forward(self, ic: Tensor) -> Tensor:
        """log|det ∂x_free/∂ic|, shape (B,): Σ_{k≥2} log r_k + Σ_{k≥3} (log r_k + log|sin θ_k|),
        fixed bonds at their constraint lengths (module docstring)."""
        bonds, angles, _ = self.split(self.full(ic))
        log_r = torch.log(bonds.abs())
        return log_r[:, 1:].sum(-1) + log_r[:, 2:].sum(-1) + torch.log(torch.sin(angles[:, 1:]).abs()).sum(-1)

    def canonicalize(self, x: Tensor) -> Tensor:
        """Frames x (B, N, 3) with the rigid-body DOF fixed as :meth:`forward` fixes them."""
        return canonicalize(x, self.frame_atoms)

    def forward(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        """Internal coordinates (B, 3N−6) → Cartesian (B, N, 3) nm and log|det J_forward| (B,)."""
        if inputs.dim() != 2 or inputs.shape[1] != self.dim:
            raise ValueError(f"expected internal coordinates of shape (B, {self.dim}), got {tuple(inputs.shape)}")
        bonds, angles, torsions = self.split(self.full(inputs))
        z = self.zmatrix
        x = inputs.new_zeros(inputs.shape[0], self.n_atoms, 3)
        # a1 on +x at distance r_1 from a0 (the origin).
        x = x.index_copy(1, z[1:2, 0], (bonds[:, :1] * inputs.new_tensor([1.0, 0.0, 0.0]))[:, None])
        # a2 in the xy plane, y > 0: angle θ_2 from the (±x) direction bond_ref → angle_ref.
        u = x[:, z[2, 2]] - x[:, z[2, 1]]
        u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        r2, th2 = bonds[:, 1:2], angles[:, 0:1]
        p2 = x[:, z[2, 1]] + r2 * (torch.cos(th2) * u + torch.sin(th2) * inputs.new_tensor([0.0, 1.0, 0.0]))
        x = x.index_copy(1, z[2:3, 0], p2[:, None])

        for start, stop in self._level_bounds:
            rows = self._level_rows[start:stop]
            atoms, b_ref, a_ref, t_ref = z[rows].unbind(-1)
            placed = self._nerf(
                x[:, b_ref], x[:, a_ref], x[:, t_ref], bonds[:, rows - 1], angles[:, rows - 2], torsions[:, rows - 3]
            )
            x = x.index_copy(1, atoms, placed)
        return x, self.log_det_forward(inputs)

    @staticmethod
    def _nerf(b: Tensor, a: Tensor, t: Tensor, r: Tensor, theta: Tensor, tau: Tensor) -> Tensor:
        """Place X with |XB| = r, ∠XBA = θ, dihedral(X, B, A, T) = τ (Natural Extension Reference Frame).

        Local frame at B: e1 along A→B, e3 normal to the T, A, B plane, e2 = e3 × e1; then
        X = B + r(−cos θ e1 + sin θ cos τ e2 + sin θ sin τ e3), whose Jacobian is r² sin θ.
        """
        e1 = b - a
        e1 = e1 / torch.linalg.vector_norm(e1, dim=-1, keepdim=True)
        e3 = torch.cross(a - t, e1, dim=-1)
        e3 = e3 / torch.linalg.vector_norm(e3, dim=-1, keepdim=True)
        e2 = torch.cross(e3, e1, dim=-1)
        r, theta, tau = r[..., None], theta[..., None], tau[..., None]
        return b + r * (-torch.cos(theta) * e1 + torch.sin(theta) * (torch.cos(tau) * e2 + torch.sin(tau) * e3))

    def inverse(self, inputs: Tensor, context=None) -> tuple[Tensor, Tensor]:
        """Cartesian (B, N, 3) nm → internal coordinates (B, dim) and log|det J_inverse| (B,); the
        fixed bond lengths of ``inputs`` are dropped, not checked (the log-det uses the constraint lengths)."""
        if inputs.dim() != 3 or inputs.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"expected Cartesian frames of shape (B, {self.n_atoms}, 3), got {tuple(inputs.shape)}")
        z = self.zmatrix
        bonds = distance(inputs[:, z[1:, 0]], inputs[:, z[1:, 1]])
        angles = bond_angle(inputs[:, z[2:, 0]], inputs[:, z[2:, 1]], inputs[:, z[2:, 2]])
        torsions = dihedral(inputs[:, z[3:, 0]], inputs[:, z[3:, 1]], inputs[:, z[3:, 2]], inputs[:, z[3:, 3]])
        ic = torch.cat([bonds, angles, torsions], dim=-1)
        if self.fixed_bonds:
            ic = ic[:, self._free_index]
        return ic, -self.log_det_forward(ic)
