"""gptoss: readable GPT-style decoder-only transformers, from GPT-2 to OpenAI's gpt-oss.

The lesson is at the top: `config.py` (GPTConfig and its presets), `model.py` (the whole model),
`kv_cache.py` (incremental decoding). Every other concern has its subpackage:

    util/         atomic files, devices, argument checks, unwrapping compiled/distributed models, C kernels built on first use
    data/         tokenizers, corpora, token files, batches
    checkpoints/  the project's own format, Hugging Face / OpenAI names and configs, MXFP4, load, export
    train/        run config, trainer and its parts (distributed, checkpoints, metrics, signals,
                  optimizer, schedule, training windows), the seed's simple train_model loop
    inference/    generate / stream, stop strings, sampling, CPU kernels, chat formats
    serve/        the OpenAI-compatible server: continuous-batching engine, OpenAI/harmony formats, HTTP app, chat page
    cli/          every `gptoss` verb, sharing one argument vocabulary and one error wrapper

One dependency direction, checked by tests/test_layout.py: a module imports only from its own
layer or the layers below it, never from a peer:

    cli  ->  serve  ->  train | inference | inspection  ->  checkpoints  ->  data  ->  model  ->  kv_cache  ->  config  ->  util

(checkpoints sit above data because a checkpoint carries its tokenizer). The exceptions are the
model's facades GPT.from_pretrained, GPT.save_pretrained and GPT.generate, which import their
implementation when called, so that `import gptoss.model` loads nothing but the core.
"""

from gptoss.config import PRESETS, GPTConfig
from gptoss.model import GPT, create_gpt_oss_20b

__all__ = ["GPT", "GPTConfig", "PRESETS", "create_gpt_oss_20b"]
