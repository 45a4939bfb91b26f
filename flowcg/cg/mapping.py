"""Slice coarse-grained mapping: one bead per selected atom, with an aggregated force map.

Positions. A slice mapping keeps a subset of the atoms: bead I sits on its atom a(I),

    X_I = x_{a(I)}                       (nm),

a linear map X = C x whose matrix C (n_beads × N) has one 1 per row (:attr:`CGMapping.position_map`).

Forces. Every atom is assigned to the bead whose atom is nearest along the bond graph (graph
distance in bonds; ties go to the lower bead index), and the bead force is the sum of the
atomistic forces of its atoms,

    F_I = Σ_{i assigned to I} f_i        (kJ/mol/nm),

again linear, F = D f (:attr:`CGMapping.force_map`). Why a sum: a constant force map D gives the
mean force −∇_X A(X) = E[D f | C x = X] whenever C Dᵀ = 1 (Ciccotti, Kapral & Vanden-Eijnden 2005;
Noid et al. 2008): the direction "move bead atom a(I) and every atom assigned to I rigidly by
one unit" changes X_I by one and no other bead. For a slice mapping that condition only fixes
the coefficients of the bead atoms themselves (1 on their own bead, 0 on others), so the
non-bead atoms may carry any weight; summing them into their nearest bead is the common
"aggregated force" choice of CGSchNet-style force matching; it also stays valid when X–H bonds
are constrained, since a hydrogen always shares its bonded atom's bead and the constraint forces
cancel inside the bead. It conserves the total force, Σ_I F_I = Σ_i f_i. It is *not* the exact
(statistically optimal) force map of Krämer et al. (J. Phys. Chem. Lett. 2023), a different
linear map fitted, among all maps that satisfy the condition above, to minimise the noise of the
mapped force.

Topology. Two beads are bonded when the bond graph holds a path between their atoms that passes
through no other bead atom. CG angles are the paths i–j–k and CG dihedrals the paths i–j–k–l
of the CG bond graph (for the alanine-dipeptide backbone C–N–CA–C–N the dihedrals are φ and ψ).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence, TypeVar

import mdtraj as md
import numpy as np
import torch

from flowcg.coordinates.bonds import bonded_neighbours
from flowcg.errors import ConfigError

__all__ = ["CGMapping", "ALDP_BACKBONE_SELECTION"]

#: C(ACE), N, CA, C(ALA), N(NME): the five backbone heavy atoms that carry φ and ψ.
ALDP_BACKBONE_SELECTION = "(resname ACE and name C) or (resname ALA and name N CA C) or (resname NME and name N)"

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_TYPE_KEYS = ("name", "residue_name", "element")


def _graph_distances(neighbours: list[list[int]], start: int) -> np.ndarray:
    """Bond-count distance from ``start`` to every atom (breadth-first), −1 where unreachable."""
    depth = np.full(len(neighbours), -1, dtype=np.int64)
    depth[start] = 0
    queue = deque([start])
    while queue:
        a = queue.popleft()
        for b in neighbours[a]:
            if depth[b] < 0:
                depth[b] = depth[a] + 1
                queue.append(b)
    return depth


class CGMapping:
    """Slice mapping of an mdtraj topology onto the atoms chosen by ``selection``.

    Args:
        topology: the all-atom ``mdtraj.Topology`` (bonds are needed for the force map).
        selection: an mdtraj selection string (beads in atom-index order) or a sequence of atom
            indices (beads in the given order).
        bead_type_key: what makes two beads share an embedding type: ``"name"`` (atom name, so
            the N of every residue is one type), ``"residue_name"`` (residue name + atom name)
            or ``"element"``. Types are numbered in order of first appearance.

    Attributes:
        bead_atoms: (n_beads,) atom index of each bead.
        assignment: (N,) bead index of every atom (the bead it gives its force to).
        bead_types: (n_beads,) int64 embedding types; ``type_names`` labels them.
        bonds, angles, dihedrals: (n, 2), (n, 3), (n, 4) int64 bead indices (module docstring).
        masses: (n_beads,) sum of the masses (amu) of the atoms assigned to each bead.

    Raises:
        ValueError: for an empty or repeated selection, or an atom that no bead can reach
            along the bond graph.
    """

    def __init__(self, topology: md.Topology, selection: str | Sequence[int], bead_type_key: str = "name"):
        if bead_type_key not in _TYPE_KEYS:
            raise ConfigError(f"bead_type_key must be one of {_TYPE_KEYS}, got '{bead_type_key}'")
        atoms = topology.select(selection) if isinstance(selection, str) else np.asarray(selection, dtype=np.int64)
        if atoms.ndim != 1 or atoms.size == 0:
            raise ConfigError(f"selection {selection!r} picks no atoms")
        if len(set(atoms.tolist())) != atoms.size or atoms.min() < 0 or atoms.max() >= topology.n_atoms:
            raise ConfigError(f"selection {selection!r} must pick distinct atoms among 0..{topology.n_atoms - 1}")
        self.topology = topology
        self.bead_atoms = atoms.astype(np.int64)
        neighbours = bonded_neighbours(topology)
        # (n_beads, N) bond-count distances; one BFS per bead is cheap next to anything using the map.
        depth = np.stack([_graph_distances(neighbours, int(a)) for a in self.bead_atoms])
        unreachable = np.flatnonzero((depth < 0).all(axis=0))
        if unreachable.size:
            raise ConfigError(f"atoms {unreachable[:10].tolist()} are not bonded to any bead; cannot map their forces")
        # argmin returns the first minimum, so ties go to the lower bead index.
        self.assignment = np.where(depth < 0, np.iinfo(np.int64).max, depth).argmin(axis=0).astype(np.int64)
        self.bead_types, self.type_names = self._types(bead_type_key)
        self.bonds = self._cg_bonds(neighbours)
        self.angles, self.dihedrals = self._paths()
        atom_masses = np.array([atom.element.mass if atom.element is not None else 0.0 for atom in topology.atoms])
        self.masses = np.bincount(self.assignment, weights=atom_masses, minlength=self.n_beads)

    # ---------------------------------------------------------------- constructors

    @classmethod
    def aldp_backbone(cls, topology: md.Topology, bead_type_key: str = "name") -> "CGMapping":
        """The 5-bead alanine-dipeptide backbone C(ACE), N, CA, C, N(NME)."""
        return cls(topology, ALDP_BACKBONE_SELECTION, bead_type_key)

    @classmethod
    def heavy_atoms(cls, topology: md.Topology, bead_type_key: str = "residue_name") -> "CGMapping":
        """One bead per heavy (non-hydrogen) atom; 10 beads for alanine dipeptide.

        Types default to residue + atom name because atom names alone (C, CA, O …) would merge
        chemically different heavy atoms such as the two methyl carbons.
        """
        return cls(topology, "not element H", bead_type_key)

    # ---------------------------------------------------------------- properties

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    @property
    def n_beads(self) -> int:
        return int(self.bead_atoms.size)

    @property
    def n_types(self) -> int:
        return len(self.type_names)

    @property
    def position_map(self) -> np.ndarray:
        """C, (n_beads, N): X = C x (one 1 per row, at the bead atom)."""
        c = np.zeros((self.n_beads, self.n_atoms))
        c[np.arange(self.n_beads), self.bead_atoms] = 1.0
        return c

    @property
    def force_map(self) -> np.ndarray:
        """D, (n_beads, N): F = D f (D_Ii = 1 if atom i is assigned to bead I)."""
        d = np.zeros((self.n_beads, self.n_atoms))
        d[self.assignment, np.arange(self.n_atoms)] = 1.0
        return d

    # ---------------------------------------------------------------- maps

    def map_positions(self, x: ArrayT) -> ArrayT:
        """Bead positions (..., n_beads, 3) nm from atom positions (..., N, 3) nm (numpy or torch)."""
        self._check_atoms(x)
        if isinstance(x, torch.Tensor):
            return x[..., torch.as_tensor(self.bead_atoms, device=x.device), :]
        return np.asarray(x)[..., self.bead_atoms, :]

    def map_forces(self, f: ArrayT) -> ArrayT:
        """Bead forces (..., n_beads, 3) kJ/mol/nm: the sum of the forces of each bead's atoms."""
        self._check_atoms(f)
        if isinstance(f, torch.Tensor):
            d = torch.as_tensor(self.force_map, dtype=f.dtype, device=f.device)
            return torch.einsum("kn,...nd->...kd", d, f)
        f = np.asarray(f)
        return np.einsum("kn,...nd->...kd", self.force_map.astype(np.result_type(f.dtype, np.float32)), f)

    def _check_atoms(self, x) -> None:
        if x.ndim < 2 or tuple(x.shape[-2:]) != (self.n_atoms, 3):
            raise ConfigError(f"expected (..., {self.n_atoms}, 3) atomistic coordinates, got {tuple(x.shape)}")

    # ---------------------------------------------------------------- CG topology

    def nonbonded_pairs(self, min_separation: int = 3) -> np.ndarray:
        """Bead pairs (n, 2), i < j, at least ``min_separation`` CG bonds apart.

        The default 3 excludes bonded (1–2) and angle (1–3) pairs, whose distances the bond and
        angle terms already control. Beads in different connected components always count.
        """
        hops = self.bead_graph_distances()
        i, j = np.triu_indices(self.n_beads, k=1)
        keep = (hops[i, j] < 0) | (hops[i, j] >= min_separation)
        return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)

    def bead_graph_distances(self) -> np.ndarray:
        """(n_beads, n_beads) number of CG bonds between beads, −1 where not connected."""
        neighbours: list[list[int]] = [[] for _ in range(self.n_beads)]
        for i, j in self.bonds:
            neighbours[i].append(int(j))
            neighbours[j].append(int(i))
        return np.stack([_graph_distances(neighbours, i) for i in range(self.n_beads)])

    def _types(self, key: str) -> tuple[np.ndarray, list[str]]:
        def label(atom: md.core.topology.Atom) -> str:
            if key == "element":
                return atom.element.symbol if atom.element is not None else atom.name
            return f"{atom.residue.name}-{atom.name}" if key == "residue_name" else atom.name

        labels = [label(self.topology.atom(int(a))) for a in self.bead_atoms]
        names = list(dict.fromkeys(labels))  # first-appearance order
        return np.array([names.index(s) for s in labels], dtype=np.int64), names

    def _cg_bonds(self, neighbours: list[list[int]]) -> np.ndarray:
        """Bead pairs joined by a bond-graph path free of other bead atoms (flood fill that stops at beads)."""
        bead_of_atom = {int(a): k for k, a in enumerate(self.bead_atoms)}
        bonds = set()
        for k, start in enumerate(self.bead_atoms):
            seen, queue = {int(start)}, deque([int(start)])
            while queue:
                a = queue.popleft()
                for b in neighbours[a]:
                    if b in seen:
                        continue
                    seen.add(b)
                    if b in bead_of_atom:
                        bonds.add((min(k, bead_of_atom[b]), max(k, bead_of_atom[b])))
                    else:
                        queue.append(b)
        return np.array(sorted(bonds), dtype=np.int64).reshape(-1, 2)

    def _paths(self) -> tuple[np.ndarray, np.ndarray]:
        """Angles i–j–k (i < k) and dihedrals i–j–k–l (j < k) of the CG bond graph, sorted."""
        neighbours: list[set[int]] = [set() for _ in range(self.n_beads)]
        for i, j in self.bonds:
            neighbours[i].add(int(j))
            neighbours[j].add(int(i))
        angles = sorted((i, j, k) for j in range(self.n_beads) for i in neighbours[j] for k in neighbours[j] if i < k)
        dihedrals = sorted(
            (i, j, k, l)
            for j in range(self.n_beads)
            for k in neighbours[j]
            if j < k  # each central bond once; the reversed path is the same dihedral
            for i in neighbours[j] - {k}
            for l in neighbours[k] - {j, i}
        )
        return np.array(angles, dtype=np.int64).reshape(-1, 3), np.array(dihedrals, dtype=np.int64).reshape(-1, 4)

    def __repr__(self) -> str:
        return f"CGMapping(n_atoms={self.n_atoms}, n_beads={self.n_beads}, types={self.type_names})"
