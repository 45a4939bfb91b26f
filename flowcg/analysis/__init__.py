"""Evaluation of sample sets: metrics and plots for synthetic targets, and for molecules against reference MD."""
