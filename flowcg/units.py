"""Physical constants and the thermal energy, in flowcg's units (nm, ps, amu, kJ/mol, K).

>>> round(kT(300.0), 6)  # kJ/mol
2.494339
"""

from __future__ import annotations

__all__ = ["MOLAR_GAS_CONSTANT", "kT"]

#: R in kJ/(mol K) (CODATA 2018).
MOLAR_GAS_CONSTANT = 0.0083144626


def kT(temperature_K: float) -> float:
    """Thermal energy R T in kJ/mol."""
    return MOLAR_GAS_CONSTANT * temperature_K
