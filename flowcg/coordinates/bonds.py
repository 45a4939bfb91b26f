"""The bond graph of a topology: every atom's bonded neighbours.

One source for everything that walks a molecule's bonds: the Z-matrix builder
(:mod:`flowcg.coordinates.internal`), symmetric-rotor detection (:mod:`flowcg.coordinates.slow_torsions`),
amide bonds (:mod:`flowcg.coordinates.amide`) and the CG bead distances (:mod:`flowcg.cg.mapping`).
"""

from __future__ import annotations

import mdtraj as md

__all__ = ["bonded_neighbours"]


def bonded_neighbours(topology: md.Topology) -> list[list[int]]:
    """Atom indices bonded to each atom, in the topology's bond order (a list per atom).

    >>> topology = md.Topology()
    >>> residue = topology.add_residue("MET", topology.add_chain())
    >>> c, o, h = (topology.add_atom(n, md.element.get_by_symbol(e), residue) for n, e in (("C", "C"), ("O", "O"), ("H", "H")))
    >>> topology.add_bond(c, o); topology.add_bond(c, h)
    >>> bonded_neighbours(topology)
    [[1, 2], [0], [0]]
    """
    neighbours: list[list[int]] = [[] for _ in range(topology.n_atoms)]
    for a, b in topology.bonds:
        neighbours[a.index].append(b.index)
        neighbours[b.index].append(a.index)
    return neighbours
