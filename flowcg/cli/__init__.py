"""Command-line entry points (Hydra apps)."""

import warnings

# conf/hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml share their names with the launcher
# plugins' structured configs, so Hydra 1.3 merges them onto those schemas and warns that this
# "automatic schema matching" is deprecated. The files list every field of their schema, so they also
# compose alone once Hydra drops the matching; the warning says nothing a user can act on.
warnings.filterwarnings(
    "ignore",
    message=r"\s*'hydra/launcher/(joblib|submitit_local|submitit_slurm)' is validated against ConfigStore schema",
    category=UserWarning,
)
