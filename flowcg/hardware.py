"""What this machine is: its CPU model, and whether it multiplies bfloat16 matrices in hardware.

Both come from /proc/cpuinfo (Linux); where it is missing, the model name falls back to
:func:`platform.processor` and bfloat16 counts as emulated, the safe side for a precision default.
"""

from __future__ import annotations

import platform

#: /proc/cpuinfo flags of bfloat16 matrix units: AVX512-BF16 (AMD Zen 4, Intel Cooper Lake on) and AMX.
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo, or None (no such file or line)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith(field)), None)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    return _cpuinfo("model name") or platform.processor() or "cpu"


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware; where it cannot, oneDNN emulates them
    and a bfloat16 product is no faster than a float32 one."""
    return bool(BFLOAT16_FLAGS & set((_cpuinfo("flags") or "").split()))
