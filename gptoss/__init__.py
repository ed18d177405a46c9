"""gptoss: readable GPT-style decoder-only transformers, from GPT-2 to OpenAI's gpt-oss."""

from gptoss.config import PRESETS, GPTConfig
from gptoss.model import GPT, create_gpt_oss_20b

__all__ = ["GPT", "GPTConfig", "PRESETS", "create_gpt_oss_20b"]
