"""Temperature replica exchange for batched walkers, and MBAR weights back to the target temperature.

Why. The reference for a molecular target must be checked by a method that shares nothing with
the biased walkers (no bias on φ/ψ, no reweighting by a bias, no single start). Parallel tempering
(Swendsen & Wang 1986; Sugita & Okamoto 1999) is that method: replicas at temperatures
T₀ < T₁ < … < T_{K−1} run plain Langevin dynamics and swap configurations, so barriers that are
rare at T₀ are crossed at the top of the ladder and the crossings come down to T₀.

The ladder. ``n_walkers`` = L ladders × K temperatures; walker ``s`` belongs to ladder s // K and
runs at T_{s mod K}, geometric between the target's T₀ and ``max_temperature_K`` (a constant
acceptance for a constant heat capacity). Ladders never exchange with each other, so the halves
of the ladders are independent runs (the reference's noise floor).

An exchange. Neighbours (k, k+1) of a ladder swap configurations with probability

    min(1, exp[(β_k − β_{k+1}) (U_k − U_{k+1})]),    β = 1 / k_B T,

which keeps every product ensemble Π_k exp(−β_k U(x_k)) invariant (U: the potential energy, which
for the implicit-solvent force fields here does not depend on T). Even pairs (0,1), (2,3), … are
tried at even exchange times and odd pairs at odd ones (deterministic alternation: detailed balance
per move, no pair waits). A swapped configuration keeps its velocity direction, scaled by
√(T_new / T_old) so that it is Maxwell–Boltzmann at its new temperature.

Back to T₀. The frames of every temperature are combined by MBAR (Shirts & Chodera 2008, through
``pymbar``): the weight of frame n at T₀ is

    w_n ∝ exp(−β₀ U_n) / Σ_k N_k exp(f_k − β_k U_n),

with f_k the reduced free energies that MBAR solves for. Frames from hot replicas whose energies
are never seen at T₀ get negligible weight; the frames recorded at T₀ alone are a second, unweighted
estimator of the same ensemble.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.special import logsumexp
from torch import Tensor

from flowcg.errors import ConfigError
from flowcg.units import kT

__all__ = ["TemperatureLadder", "mbar_log_weights"]


class TemperatureLadder:
    """K geometric temperatures from ``temperature_K`` to ``max_temperature_K`` for ladders of walkers.

    >>> ladder = TemperatureLadder(300.0, 600.0, 3)
    >>> [round(t, 1) for t in ladder.temperatures_K.tolist()]
    [300.0, 424.3, 600.0]
    >>> ladder.walker_temperatures_K(6).tolist() == 2 * ladder.temperatures_K.tolist()
    True
    """

    def __init__(self, temperature_K: float, max_temperature_K: float, n_temperatures: int):
        if n_temperatures < 2:
            raise ConfigError(f"a temperature ladder needs at least 2 temperatures, got {n_temperatures}")
        if not max_temperature_K > temperature_K:
            raise ConfigError(f"walkers.max_temperature_K ({max_temperature_K}) must exceed the target's temperature ({temperature_K} K)")
        ratio = (max_temperature_K / temperature_K) ** (1.0 / (n_temperatures - 1))
        self.temperatures_K = torch.tensor([temperature_K * ratio**k for k in range(n_temperatures)], dtype=torch.float64)
        self.n_temperatures = n_temperatures

    def walker_temperatures_K(self, n_walkers: int) -> Tensor:
        """(n_walkers,) bath temperature of every walker, ladder-major (walker s at T_{s mod K})."""
        if n_walkers % self.n_temperatures:
            raise ConfigError(f"walkers.n_walkers ({n_walkers}) must be a multiple of walkers.n_temperatures ({self.n_temperatures})")
        return self.temperatures_K.repeat(n_walkers // self.n_temperatures)

    def exchange(self, x: Tensor, v: Tensor, energy_kj_mol: Tensor, alive: Tensor, parity: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One round of neighbour swaps (pairs (k, k+1) with k ≡ parity mod 2) in every ladder.

        Args:
            x, v: (L·K, N, 3) positions nm and velocities nm/ps, ladder-major; returned swapped (new tensors).
            energy_kj_mol: (L·K,) potential energies U(x) in kJ/mol.
            alive: (L·K,) walkers still running; a pair with a stopped walker is not tried.
            parity: 0 for the even pairs, 1 for the odd ones.
            generator: the source of the acceptance draws (the run's RNG, so a resumed run repeats them).

        Returns:
            x, v and the (K−1,) number of accepted swaps per pair in this round (0 for the pairs not tried).
        """
        K = self.n_temperatures
        L = x.shape[0] // K
        lower = torch.arange(parity, K - 1, 2)
        accepted = torch.zeros(K - 1, dtype=torch.long)
        if not len(lower):
            return x, v, accepted
        beta = 1.0 / kT(self.temperatures_K)
        energy = energy_kj_mol.detach().to(torch.float64).view(L, K)
        log_ratio = (beta[lower] - beta[lower + 1]) * (energy[:, lower] - energy[:, lower + 1])  # (L, pairs)
        uniform = torch.rand(log_ratio.shape, generator=generator, dtype=torch.float64)
        both_alive = alive.view(L, K)[:, lower] & alive.view(L, K)[:, lower + 1]
        # NaN (an infinite energy) never compares True: such a pair is not swapped
        swap = (torch.log(uniform) < log_ratio) & both_alive
        accepted[lower] = swap.sum(0)
        x, v = x.clone().view(L, K, *x.shape[1:]), v.clone().view(L, K, *v.shape[1:])
        ladders, pairs = torch.nonzero(swap, as_tuple=True)
        k_low, k_high = lower[pairs], lower[pairs] + 1
        speed_up = torch.sqrt(self.temperatures_K[k_high] / self.temperatures_K[k_low]).to(v).view(-1, 1, 1)
        x_low, x_high = x[ladders, k_low].clone(), x[ladders, k_high].clone()
        v_low, v_high = v[ladders, k_low].clone(), v[ladders, k_high].clone()
        x[ladders, k_low], x[ladders, k_high] = x_high, x_low
        v[ladders, k_low], v[ladders, k_high] = v_high / speed_up, v_low * speed_up
        return x.view(L * K, *x.shape[2:]), v.view(L * K, *v.shape[2:]), accepted


def mbar_log_weights(potential_kj_mol: np.ndarray, bath_temperature_K: np.ndarray, temperature_K: float) -> np.ndarray:
    """Log weights (N,) at ``temperature_K`` of frames recorded at several bath temperatures, by MBAR.

    Args:
        potential_kj_mol: (N,) potential energy U of every frame, kJ/mol.
        bath_temperature_K: (N,) the temperature each frame was sampled at (one of a few values).
        temperature_K: the temperature to reweight to (e.g. the ladder's lowest).

    Returns:
        log w (N,), normalised so that logsumexp(log w) = 0 (weights summing to one).

    >>> rng = np.random.default_rng(0)
    >>> T = np.repeat([300.0, 600.0], 2000)  # a harmonic well, U ~ (d/2) kT · Gamma: here d = 2
    >>> U = rng.exponential(kT(T))
    >>> w = np.exp(mbar_log_weights(U, T, 300.0))
    >>> round(float((w * U).sum() / kT(300.0)), 1)  # ⟨U⟩ at 300 K = kT for d = 2
    1.0
    """
    # imported here, as only replica-exchange runs need it; pymbar warns at import that the optional
    # JAX backend is missing, which is expected on a CPU install and not the user's concern
    logging.getLogger("pymbar").setLevel(logging.ERROR)
    from pymbar import MBAR

    potential = np.asarray(potential_kj_mol, dtype=np.float64)
    bath = np.asarray(bath_temperature_K, dtype=np.float64)
    if potential.shape != bath.shape or potential.ndim != 1:
        raise ValueError(f"potential_kj_mol and bath_temperature_K must be matching vectors, got {potential.shape}, {bath.shape}")
    if not np.isfinite(potential).all():
        raise ValueError(f"{int((~np.isfinite(potential)).sum())} frames have a non-finite potential energy")
    states, counts = np.unique(bath, return_counts=True)
    reduced = potential[None, :] / kT(states)[:, None]  # u_kn = β_k U_n
    # robust: the adaptive solver, started from the free energies of neighbouring-state reweighting
    mbar = MBAR(reduced, counts, initialize="BAR", solver_protocol="robust")
    log_denominator = logsumexp(np.log(counts)[:, None] + mbar.f_k[:, None] - reduced, axis=0)
    log_w = -potential / kT(temperature_K) - log_denominator
    return log_w - logsumexp(log_w)

