"""Learnable invertible linear map that mixes the slow and fast latent variables.

y = L U z + b with L unit lower-triangular and U upper-triangular with a positive diagonal
(nflows' LU parameterisation), so log|det| = Σ log U_ii exactly and both directions cost O(D²).
Initialised at the identity, so the slow latent starts out as the first coordinates.
"""

from __future__ import annotations

import torch
from nflows.transforms import LULinear


class LUMixing(LULinear):
    """nflows' LULinear with its inverse solved by ``torch.linalg.solve_triangular``.

    nflows 0.14 inverts with ``torch.triangular_solve``, which torch has deprecated for removal;
    the maths is unchanged.
    """

    def __init__(self, features: int):
        super().__init__(features, using_cache=False, identity_init=True)

    def inverse_no_cache(self, inputs):
        lower, upper = self._create_lower_upper()
        rhs = (inputs - self.bias).T
        solved = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        outputs = torch.linalg.solve_triangular(upper, solved, upper=True).T
        return outputs, -self.logabsdet() * inputs.new_ones(outputs.shape[0])
