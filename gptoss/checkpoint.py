"""This project's own checkpoint format: a directory with config.json, model.safetensors and the
tokenizer that the model was trained with.

Directories are written atomically: everything goes into a temporary sibling directory, which is
then renamed into place, so a crash or Ctrl-C midway never leaves a half-written checkpoint under
the real name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptoss.config import GPTConfig
from gptoss.files import readable_directory, write_directory_atomically
from gptoss.model import GPT

FORMAT = "gptoss"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def model_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's tensors as safetensors can store them (a tied unembedding is stored once)."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model wraps the real one
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_model(model: GPT, directory: str | Path, tokenizer=None, metadata: dict | None = None, write_extra=None) -> Path:
    """Save model (+ its tokenizer, + free-form metadata) as a checkpoint directory.

    write_extra(tmp_dir), if given, adds more files (e.g. a trainer's state) in the same atomic write.
    """
    model = getattr(model, "_orig_mod", model)

    def write(tmp: Path) -> None:
        info = {"format": FORMAT, "config": model.config.to_dict(), "metadata": metadata or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
        save_file(model_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        if write_extra is not None:
            write_extra(tmp)

    return write_directory_atomically(directory, write)


def is_gptoss_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` holds a checkpoint in this project's own format."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, object | None]:
    """Load a checkpoint written by save_model: returns (model in eval mode, tokenizer or None)."""
    directory = readable_directory(directory)
    if not is_gptoss_checkpoint(directory):
        raise ValueError(f"{directory} is not a gptoss checkpoint (no {CONFIG_FILE} with format {FORMAT!r})")
    info = json.loads((directory / CONFIG_FILE).read_text())
    model = GPT(GPTConfig.from_dict(info["config"]), device="meta")
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    except (OSError, SafetensorError) as err:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} is missing or not a readable safetensors file ({err}): the checkpoint is "
            "incomplete or corrupt; use another one"
        ) from err
    model.load_state_dict(state, strict=False, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    expected = set(model_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not match its config: missing {missing}, unexpected {unexpected}")
    tokenizer = None
    if (directory / "tokenizer").is_dir():
        from gptoss.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(directory / "tokenizer")
    return model.eval(), tokenizer
