"""Checkpoints: this project's own format, Hugging Face's and OpenAI's names and configs, MXFP4.

    native   our format (config.json + model.safetensors + tokenizer/), written atomically
    hf       Hugging Face / OpenAI names and configs <-> ours (pure functions over dicts of tensors)
    mxfp4    gpt-oss's 4-bit expert format, and experts that stay packed in it
    load     from_pretrained (every format) and load_model (ours, with its tokenizer)
    export   save_pretrained: directories that transformers opens, or ours
"""

from gptoss.checkpoints.export import SAVE_FORMATS, save_pretrained
from gptoss.checkpoints.load import detect_format, from_pretrained, load_checkpoint_tokenizer, load_model
from gptoss.checkpoints.native import save_model

__all__ = [
    "SAVE_FORMATS", "detect_format", "from_pretrained", "load_checkpoint_tokenizer", "load_model", "save_model",
    "save_pretrained",
]  # fmt: skip
