"""Active learning for CG potentials: query strategies, oracles and the loop with its journal."""
