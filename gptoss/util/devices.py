"""Choosing the device a command runs on: `auto`, `cpu`, `cuda` or `cuda:N` (training and inference)."""

from __future__ import annotations

import os
import re

import torch

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"


def check_device_name(name: str) -> None:
    """Raise ValueError unless `name` is one of the names resolve_device takes."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """`auto` is this process's CUDA device when present, else the CPU; `cuda` is this process's
    CUDA device (cuda:LOCAL_RANK under torchrun). A CUDA device becomes the current one."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        # under torchrun each process takes its own GPU (unless each sees only its own)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        name = f"cuda:{local_rank if local_rank < torch.cuda.device_count() else 0}"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available: use cpu or auto")
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)  # NCCL collectives and new CUDA tensors go to the current device
    return device
