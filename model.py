"""The seed's model entry point: `from model import create_gpt_oss_20b`.

A thin layer over the gptoss package, where the model lives (gptoss/model.py).
"""

from gptoss.config import GPTConfig
from gptoss.model import GPT, create_gpt_oss_20b

__all__ = ["GPT", "GPTConfig", "create_gpt_oss_20b"]

if __name__ == "__main__":
    model = create_gpt_oss_20b()
    print(f"Model has {sum(p.numel() for p in model.parameters()):,} parameters")
