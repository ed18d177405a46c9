"""Learning-rate schedules: the learning rate of optimizer update number `step` (0, 1, 2, ...).

Every schedule starts with a linear warmup from max_lr / warmup_steps up to max_lr (large early
updates from a random init are unstable with Adam), then:

- `cosine`:   half a cosine wave from max_lr down to min_lr at step total_steps (GPT-2/3, nanoGPT);
- `constant`: max_lr until the end;
- `wsd`:      warmup-stable-decay: max_lr, then a linear decay to min_lr over the last
              decay_fraction of the run (lets a run be extended from its last stable checkpoint).

Past total_steps every decaying schedule stays at min_lr, the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "constant", "wsd")


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate schedule; call it with a step number to get that step's learning rate."""

    kind: str
    max_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    decay_fraction: float = 0.2  # wsd only: the share of total_steps spent decaying

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 < self.max_lr < math.inf:
            raise ValueError(f"the learning rate must be > 0 and finite, got {self.max_lr!r}")
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"min_lr must be in [0, learning_rate={self.max_lr}], got {self.min_lr!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps!r}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction!r}")

    def __call__(self, step: int) -> float:
        """Learning rate of update `step` (0-based)."""
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.max_lr
        if step >= self.total_steps:
            return self.min_lr
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)  # in [0, 1)
            return self.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (self.max_lr - self.min_lr)
        # wsd: stable, then linear decay over the last decay_steps updates
        decay_steps = max(1, round(self.decay_fraction * self.total_steps))
        decay_start = max(self.warmup_steps, self.total_steps - decay_steps)
        if step < decay_start:
            return self.max_lr
        progress = (step - decay_start) / max(1, self.total_steps - decay_start)
        return self.max_lr - progress * (self.max_lr - self.min_lr)
