"""Inference: generating text with a model, fast on a CPU.

    generation    the decoding loop over a KV cache: generate (the seed's API), stream,
                  generate_batch, stream_text; prompts of any lengths, left-padded
    sampling      the next token from the logits: greedy, temperature, top-k/p, min-p, repetition
    stops         stop strings held back while they could still be forming
    prepare       prepare_for_inference: linear layers that read their weights at the memory's speed
    cpu_kernel    the C kernel behind them (cpu_kernel.c, built on first use) and its Python side
    mxfp4_kernel  gpt-oss's MXFP4 experts computed from their packed bytes (mxfp4_kernel.c) and KernelExperts
    chat_format   conversations as prompts: harmony (gpt-oss, through openai-harmony) or a plain transcript

The engine knows token ids only; text enters through a tokenizer passed in (stream_text, the chat
formats).
"""

from gptoss.inference.generation import GenerationStats, generate, generate_batch, stream, stream_text
from gptoss.inference.prepare import InferenceLinear, prepare_for_inference
from gptoss.inference.sampling import SamplingOptions

__all__ = ["GenerationStats", "InferenceLinear", "SamplingOptions", "generate", "generate_batch", "prepare_for_inference",
           "stream", "stream_text"]  # fmt: skip
