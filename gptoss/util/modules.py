"""Reaching the model inside the wrappers that training puts around it."""

from __future__ import annotations

import torch.nn as nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's (`_orig_mod`) and DistributedDataParallel's (`module`)
    wrappers, in whatever order they were applied; a plain module is returned as it is."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
