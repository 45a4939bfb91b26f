"""Write the fixed parameters of the synthetic mixtures into conf/target/ (run once; kept for provenance).

gmm20 (Stupp & Koutsourelakis 2025): 3 slow means uniform in [-1, 1]^10, numpy seed 20;
coupling B with iid N(0, 1/10) entries, numpy seed 21.
gmm40 (FAB-style, Midgley et al. 2023): 40 means uniform in [-40, 40]^2, numpy seed 40;
isotropic std softplus(1) as in FAB's GMM(log_var_scaling=1).
"""

from pathlib import Path

import numpy as np

CONF = Path(__file__).resolve().parents[2] / "conf" / "target"


def fmt(rows) -> str:
    return "\n".join(f"    - [{', '.join(f'{v:.6f}' for v in row)}]" for row in rows)


def main() -> None:
    slow_means = np.random.default_rng(20).uniform(-1, 1, size=(3, 10))
    coupling = np.random.default_rng(21).normal(0, 1 / np.sqrt(10), size=(10, 10))
    (CONF / "gmm20.yaml").write_text(
        "# 20-D slow/fast mixture; written by experiments/synthetic/make_target_configs.py\n"
        "name: gmm20\noptions:\n  slow_std: 0.1\n  fast_std: 0.1\n"
        f"  slow_means:\n{fmt(slow_means)}\n  coupling:\n{fmt(coupling)}\n"
    )
    means40 = np.random.default_rng(40).uniform(-40, 40, size=(40, 2))
    (CONF / "gmm40.yaml").write_text(
        "# FAB's 40-mode 2-D mixture; written by experiments/synthetic/make_target_configs.py\n"
        "name: gmm40\noptions:\n  std: 1.3132616875182228  # softplus(1), FAB's log_var_scaling=1\n"
        f"  means:\n{fmt(means40)}\n"
    )


if __name__ == "__main__":
    main()
