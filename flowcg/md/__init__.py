"""Molecular dynamics, all of it: the batched BAOAB integrator (:mod:`~flowcg.md.langevin`, for
CG replicas and all-atom walkers alike), biased multiple-walker reference sampling
(:mod:`~flowcg.md.walkers`) with its Fourier bias on (φ, ψ) (:mod:`~flowcg.md.torsion_bias`), and
plain OpenMM reference MD (:mod:`~flowcg.md.openmm_run`). ``flowcg-reference`` drives the last two.
"""
