"""This process's place in a torchrun job, the collectives the trainer needs, and the wrapping of the
model for it: DDP (a replica per process) or FSDP2 (parameters, gradients and optimizer state
sharded), with torch.compile when asked. With one process, every collective is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and the collectives
    the trainer needs; each is a no-op with one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether we created the process group (and must destroy it)

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        """Join the torchrun job described by the environment (gloo on CPU, NCCL on CUDA)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average of `tensor` over processes (in place)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over processes (in place)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true in any process (so that all processes stop at the same step)."""
        if self.world_size == 1:
            return flag
        return bool(self.sum(torch.tensor(float(flag), device=device)) > 0)

    def gather(self, obj) -> list:
        """`obj` of every process, in rank order."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if we created it, once every process is done with it (a
        process tearing gloo down while a peer still works can abort the peer)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def wrap_model(model: nn.Module, distributed: Distributed, device: torch.device, fsdp: bool, compile: bool,
               unused_parameters: bool) -> nn.Module:
    """FSDP2-shard `model` (in place) or DDP-wrap it under torchrun, and compile it if asked; returns
    the module to call for forward passes. unused_parameters: some parameters may get no gradient
    in a step (an expert that no token of this process was routed to)."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:  # one all-gather per block, freed after use
            fully_shard(block)
        fully_shard(model)
    wrapped = torch.compile(model) if compile else model
    if distributed.world_size > 1 and not fsdp:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids, find_unused_parameters=unused_parameters)
    return wrapped
