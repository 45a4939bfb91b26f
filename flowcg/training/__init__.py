"""Training: the reverse-KL objective, tempering schedules, and the checkpointing trainer."""

from flowcg.training.schedules import SCHEDULES, build_schedule
from flowcg.training.trainer import TrainConfig, Trainer

__all__ = ["SCHEDULES", "TrainConfig", "Trainer", "build_schedule"]
