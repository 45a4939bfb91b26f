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

Modules: :mod:`~flowcg.targets.forcefield.common` (constants, errors, vector kernels),
:mod:`~flowcg.targets.forcefield.bonded`, :mod:`~flowcg.targets.forcefield.nonbonded`,
:mod:`~flowcg.targets.forcefield.obc` (the terms), :mod:`~flowcg.targets.forcefield.model`
(:class:`TorchForceField`) and :mod:`~flowcg.targets.forcefield.check` (the OpenMM self-check).
"""

from flowcg.targets.forcefield.bonded import HarmonicAngles, HarmonicBonds, PeriodicTorsions
from flowcg.targets.forcefield.check import CHECK_TOLERANCES, check_against_openmm, disagreement
from flowcg.targets.forcefield.common import ONE_4PI_EPS0, ForceFieldMismatchError, UnsupportedForceError, unordered_pairs
from flowcg.targets.forcefield.model import CHUNK, TorchForceField
from flowcg.targets.forcefield.nonbonded import Nonbonded
from flowcg.targets.forcefield.obc import OBCGeneralizedBorn

__all__ = [
    "CHECK_TOLERANCES",
    "CHUNK",
    "ONE_4PI_EPS0",
    "ForceFieldMismatchError",
    "HarmonicAngles",
    "HarmonicBonds",
    "Nonbonded",
    "OBCGeneralizedBorn",
    "PeriodicTorsions",
    "TorchForceField",
    "UnsupportedForceError",
    "check_against_openmm",
    "disagreement",
    "unordered_pairs",
]
