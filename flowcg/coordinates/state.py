"""The configurational state a molecular target means: which isomers count as the molecule.

A force field's Boltzmann density covers isomers that no simulation of the molecule visits: the
mirror image at a CA centre (D, same energy as L: the force field cannot tell them apart) and the
cis isomer of each amide bond (behind a barrier of ≈ 80 kJ/mol from trans, never crossed by MD at
300 K). MD and walker references started from the L, all-trans structure hold that state only, and
the published flows are scored on it (FAB drops D samples). A flow on internal coordinates can
still draw the others now and then (a defensive Cauchy on the rotor latents reaches ω ≈ 0), and
their importance weights then belong to a different distribution than the reference's.

The target is therefore restricted to a state S with density p_S(x) ∝ exp(−u(x)) · 1[x ∈ S], and a
draw outside S gets importance weight 0 (log w = −∞): the estimators stay exact for p_S, and the
share of draws outside S (``fraction_outside_state``) is the price paid for them. ``STATES``:

* ``l_trans`` — every CA centre L (:mod:`flowcg.coordinates.chirality`) and every amide bond trans
  (:mod:`flowcg.coordinates.amide`); the default for molecules.
* ``all`` — the whole configuration space (the full Boltzmann density of the force field).

Example:

    >>> from flowcg.targets.systems import load_system
    >>> import numpy as np
    >>> aldp = load_system("aldp_implicit")
    >>> state = ConformationalState(aldp.topology, "l_trans")
    >>> x = aldp.positions[None]
    >>> state.contains(np.concatenate([x, -x])).tolist()   # the mirror image is D
    [True, False]
"""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch

from flowcg.coordinates.amide import AmideBonds
from flowcg.coordinates.chirality import CAChirality
from flowcg.errors import ConfigError

__all__ = ["STATES", "ConformationalState"]

STATES = ("l_trans", "all")


class ConformationalState:
    """Membership of frames in the state ``name`` (module docstring) of a molecule ``topology``.

    The D centres and cis bonds are detected whatever the state (so that their shares can be
    reported under ``all`` too); a topology without CA centres or amide bonds has none of that kind.

    Raises:
        ConfigError: ``name`` is not one of ``STATES``.
    """

    def __init__(self, topology: md.Topology, name: str = "l_trans"):
        if name not in STATES:
            raise ConfigError(f"unknown state '{name}'; choose one of {', '.join(STATES)}")
        self.name = name
        self.chirality = self.amides = None
        try:
            self.chirality = CAChirality(topology)
        except ValueError:
            pass
        try:
            self.amides = AmideBonds(topology)
        except ValueError:
            pass

    def is_d(self, x) -> np.ndarray:
        """(B,) True where a CA centre of frame x (B, atoms, 3) is D (all False without centres)."""
        return np.zeros(len(x), dtype=bool) if self.chirality is None else self.chirality.is_d(torch.as_tensor(x)).numpy()

    def is_cis(self, x) -> np.ndarray:
        """(B,) True where an amide bond of frame x is cis (all False without amide bonds)."""
        return np.zeros(len(x), dtype=bool) if self.amides is None else self.amides.is_cis(torch.as_tensor(x)).any(dim=-1).numpy()

    def contains(self, x) -> np.ndarray:
        """(B,) True for the frames x (B, atoms, 3) in the state."""
        if self.name == "all":
            return np.ones(len(x), dtype=bool)
        return ~(self.is_d(x) | self.is_cis(x))
