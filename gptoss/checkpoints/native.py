"""This project's own checkpoint format: a directory with config.json, model.safetensors and the
tokenizer that the model was trained with (read back by gptoss.checkpoints.load.load_model).

Directories are written atomically (gptoss.util.files): everything goes into a temporary sibling
directory, which is then renamed into place, so a crash or Ctrl-C midway never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptoss.model import GPT
from gptoss.util.files import write_directory_atomically
from gptoss.util.modules import unwrap_model

FORMAT = "gptoss"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


def model_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's tensors as safetensors can store them (a tied unembedding is stored once)."""
    model = unwrap_model(model)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_model(model: GPT, directory: str | Path, tokenizer=None, metadata: dict | None = None, write_extra=None) -> Path:
    """Save model (+ its tokenizer, + free-form metadata) as a checkpoint directory.

    write_extra(tmp_dir), if given, adds more files (e.g. a trainer's state) in the same atomic write.
    """
    model = unwrap_model(model)

    def write(tmp: Path) -> None:
        info = {"format": FORMAT, "config": model.config.to_dict(), "metadata": metadata or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
        save_file(model_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_DIR)
        if write_extra is not None:
            write_extra(tmp)

    return write_directory_atomically(directory, write)


def read_metadata(directory: str | Path) -> dict:
    """The free-form metadata saved with a checkpoint of this format (its config.json's "metadata")."""
    return json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))["metadata"]
