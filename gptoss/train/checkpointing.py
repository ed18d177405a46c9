"""A run's checkpoints and the trainer state that makes resuming exact.

A run directory holds checkpoints/step-NNNNNNN/ (the last keep_last of them) and best/. Each
checkpoint is this project's checkpoint format (gptoss.checkpoints.native: weights, tokenizer,
config) plus trainer_state.pt (optimizer, grad scaler, step and token counts, the data position
and every RNG state) and run_config.json, written in one atomic directory write.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gptoss.checkpoints.native import read_metadata, save_model
from gptoss.train.distributed import Distributed

TRAINER_STATE_FILE = "trainer_state.pt"
RUN_CONFIG_FILE = "run_config.json"
CHECKPOINTS_DIR, BEST_DIR = "checkpoints", "best"


# ---------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Every random number generator a training step can touch: python, numpy, torch CPU and CUDA."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, gauss),  # plain values: torch.load(weights_only)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- finding them
def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    found = Path(run_dir, CHECKPOINTS_DIR).glob("step-*")
    return sorted(p for p in found if (p / TRAINER_STATE_FILE).is_file())


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / TRAINER_STATE_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise FileNotFoundError(f"nothing to resume: {path} is neither a checkpoint nor a run folder with checkpoints")
    return found[-1]


def read_trainer_state(checkpoint: Path) -> dict:
    """The trainer state saved in a checkpoint (tensors and plain values only: weights_only)."""
    path = checkpoint / TRAINER_STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or not a torch file: say which file, not a pickle trace
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error}); resume from another checkpoint") from error
    missing = {"step", "tokens_seen", "optimizer", "data_generator", "rng"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a gptoss trainer state (missing {sorted(missing)}); resume from a checkpoint gptoss train wrote")
    return state


def read_run_config(checkpoint: Path) -> dict:
    """The run config a checkpoint was written with (plain values, as TrainConfig.from_dict takes them)."""
    return json.loads((checkpoint / RUN_CONFIG_FILE).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- writing them
class RunCheckpoints:
    """The checkpoints of one run directory: written by rank 0, each write a collective (every
    process calls it, in the same order), the last `keep_last` kept."""

    def __init__(self, run_dir: Path, keep_last: int, distributed: Distributed):
        self.run_dir, self.keep_last, self.dist = Path(run_dir), keep_last, distributed

    def latest(self) -> Path | None:
        """The newest complete checkpoint of this run, if any."""
        found = checkpoint_dirs(self.run_dir)
        return found[-1] if found else None

    def save(self, step: int, model, tokenizer, metadata: dict, trainer_state: Callable[[], dict], run_config: dict,
             write_extra: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
        """Write checkpoints/step-NNNNNNN atomically with the trainer state (`trainer_state()`,
        called on rank 0 only), the run config and what `write_extra(folder)` adds, and delete the
        checkpoints beyond keep_last. `model`: the full model on rank 0 (gathered), anything on the others."""
        directory = self.run_dir / CHECKPOINTS_DIR / f"step-{step:07d}"
        if self.dist.is_main:
            state = trainer_state()

            def write_trainer_files(tmp: Path) -> None:
                torch.save(state, tmp / TRAINER_STATE_FILE)
                (tmp / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2) + "\n")
                if write_extra is not None:
                    write_extra(tmp)

            save_model(model, directory, tokenizer, metadata, write_trainer_files)
            older = [d for d in checkpoint_dirs(self.run_dir) if d.name < directory.name]
            for old in older[: max(len(older) - (self.keep_last - 1), 0)]:  # keep_last with this one
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return directory

    def save_best(self, model, tokenizer, metadata: dict) -> None:
        """Write best/ (weights and tokenizer, no trainer state) atomically."""
        if self.dist.is_main:
            save_model(model, self.run_dir / BEST_DIR, tokenizer, metadata)
        self.dist.barrier()

    def set_aside_later(self, step: int) -> tuple[Path, list[str]] | None:
        """Resuming from an earlier checkpoint (a rewind, e.g. after a divergence): move the run's
        checkpoints after `step`, and best/ if it was saved later, to checkpoints/abandoned/, so the
        run goes on from one history and neither rotation, a later --resume nor best/ mixes in the
        other one. Nothing is deleted. Returns the folder they went to and their names, if any (rank 0)."""
        later = [d for d in checkpoint_dirs(self.run_dir) if d.name > f"step-{step:07d}"]
        best = self.run_dir / BEST_DIR
        if best.is_dir() and read_metadata(best).get("step", 0) > step:
            later.append(best)
        if not later:
            return None
        abandoned = self.run_dir / CHECKPOINTS_DIR / "abandoned"
        abandoned.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=abandoned))
        for directory in later:
            os.replace(directory, aside / directory.name)
        return aside, [directory.name for directory in later]
