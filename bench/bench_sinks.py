"""Attention with sinks: the fused kernel (Attention.attend_with_sinks) against the explicit softmax.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_sinks.py [--rounds 5]

The explicit form (Attention.attend_explicitly) is the one the model ran before, the one tests
compare against and the one it decodes with: scores written out, the sink appended as a column,
softmax, weights @ v with k and v repeated over each group of query heads. The fused form
(Attention.attend_with_sinks) is PyTorch's CPU flash attention with the sink as one more key. Rows:
- attention: one layer's attention alone, forward + backward, at gpt-oss-tiny's training shape
  (batch 8, 256 tokens, 4 query heads on 2 k/v heads of 32; a window of 32 on sliding layers).
- decode: one new token against 1024 cached keys (no gradient), gpt-oss-20b's head layout: why
  the model decodes (one query) with the explicit form.
- train step: gpt-oss-tiny (configs/gpt_oss_tiny.toml's model and batch), forward + backward + AdamW.
The two alternate, round by round (the machine is shared and noisy); the table gives the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptoss import GPT, GPTConfig
from gptoss.model import Attention, attention_mask
from gptoss.train.optim import adamw
from machine import describe


FORMS = {"explicit": Attention.attend_explicitly, "fused": Attention.attend_with_sinks}


def attention_case(config: GPTConfig, layer: int, B: int, T: int, S: int, dtype, grad: bool):
    """A timed call of one attention form: its layer, inputs, mask and what one call runs."""
    attention = Attention(config, layer)
    positions = torch.arange(S).expand(B, S)
    mask = attention_mask(positions[:, S - T :], positions, attention.window)
    q = torch.randn(B, config.num_heads, T, config.head_size, dtype=dtype, requires_grad=grad)
    k, v = (torch.randn(B, config.kv_heads, S, config.head_size, dtype=dtype, requires_grad=grad) for _ in range(2))

    def call(form):
        if grad:
            form(attention, q, k, v, mask, 0.0).float().sum().backward()
        else:
            with torch.no_grad():
                form(attention, q, k, v, mask, 0.0)

    return call


def train_step_case(dtype):
    """One training step of gpt-oss-tiny with the form patched into every layer."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt-oss-tiny", vocab_size=4096, max_seq_len=256)).train()
    optimizer = adamw(model, 1e-3, 0.1, fused=True)
    x, y = torch.randint(0, 4096, (2, 8, 256)).unbind(0)

    def call(form):
        for block in model.transformer.h:
            block.attn.attend_with_sinks = lambda *a, attn=block.attn: form(attn, *a)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two forms (default: 5)")
    args = parser.parse_args()
    tiny = GPTConfig.preset("gpt-oss-tiny")
    big = GPTConfig.preset("gpt-oss-20b")
    cases = {
        ("attention, sliding (window 32)", "fp32"): attention_case(tiny, 0, 8, 256, 256, torch.float32, True),
        ("attention, full", "fp32"): attention_case(tiny, 1, 8, 256, 256, torch.float32, True),
        ("attention, full", "bf16"): attention_case(tiny, 1, 8, 256, 256, torch.bfloat16, True),
        ("decode, 1 token, 1024 keys (gpt-oss-20b heads)", "bf16"): attention_case(big, 1, 1, 1, 1024, torch.bfloat16, False),
        ("train step gpt-oss-tiny (batch 8 x 256)", "fp32"): train_step_case(torch.float32),
        ("train step gpt-oss-tiny (batch 8 x 256)", "bf16"): train_step_case(torch.bfloat16),
    }
    print(describe() + "\n")
    print("| case | dtype | explicit (ms) | fused (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for (name, dtype), call in cases.items():
        times = {form: [] for form in FORMS}
        for form in FORMS.values():
            call(form)  # warm-up
        for r in range(args.rounds):
            for form_name in FORMS if r % 2 == 0 else reversed(FORMS):
                started = time.perf_counter()
                call(FORMS[form_name])
                times[form_name].append(time.perf_counter() - started)
        ms = {form: statistics.median(ts) * 1e3 for form, ts in times.items()}
        print(f"| {name} | {dtype} | {ms['explicit']:.2f} | {ms['fused']:.2f} | **{ms['explicit'] / ms['fused']:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
