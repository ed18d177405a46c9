"""Training: the seed's simple loop, and the trainer composed of parts.

    simple         train_model: the seed's epochs-over-a-token-list loop
    config         TrainConfig: the run config, one table per part
    trainer        Trainer: a run set up from a TrainConfig, trained to max_steps
    distributed    torchrun processes, their collectives, DDP / FSDP2 wrapping
    checkpointing  a run's checkpoints, their rotation, and the trainer state (RNG states included)
    metrics        metrics.csv, TensorBoard, the loss curve
    signals        SIGINT / SIGTERM: save and stop
    optim          AdamW with decay on weight matrices only
    schedule       learning-rate schedules: cosine, constant, wsd
    windows        how training windows are drawn: curriculum and augmentation
"""

from gptoss.train.config import TrainConfig
from gptoss.train.simple import train_model
from gptoss.train.trainer import Trainer, TrainingDiverged

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "train_model"]
