"""Evaluation of molecular samplers against reference MD: Ramachandran and marginal KLs, basins, MD cost."""
