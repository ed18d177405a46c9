"""Training speed: our GPT against transformers' GPT2LMHeadModel, same config, weights, data, optimizer.

    flock /tmp/gptoss-cpu.lock .venv/bin/python bench/bench_train.py [--configs char gpt2-small] [--rounds 6]

Both models are built from one GPTConfig (the HF one through gptoss.hf, with our initial weights
copied in, so their first losses agree) and trained by the same step: forward, cross-entropy,
backward, global-norm clipping, the trainer's AdamW (gptoss.train.optim.adamw), zero_grad. Only the
model differs. HF runs its default attention (sdpa) and use_cache=False, as one trains with it.

The machine is shared and noisy, so the two models alternate: each round times a few steps of one,
then of the other (the order flips every round); the table gives the median step of each.
Model FLOPs utilisation counts 6 FLOPs per weight-matrix parameter per token (forward + backward,
the unembedding included) plus 12 * layers * d_model * seq_len for attention scores and values
(causal masking not discounted), against this development machine's measured matmul peaks
(../shared/docs/MACHINE.md: PEAK_GFLOPS below, fixed; on another machine, edit them).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from gptoss.config import GPTConfig
from gptoss.data import random_batch
from gptoss.checkpoints.hf import config_to_hf_gpt2, gpt2_state_to_hf
from gptoss.model import GPT
from gptoss.train.optim import adamw

PEAK_GFLOPS = {"fp32": 180.0, "bf16": 380.0}  # MACHINE.md: 2048^3 matmul on this machine
CONFIGS = {
    # nanoGPT's CPU recipe for Shakespeare characters
    "char": dict(model=dict(vocab_size=65, d_model=128, num_layers=4, num_heads=4, d_ff=512), seq_len=64, batch=12,
                 precision="fp32", steps_per_round=10),  # fmt: skip
    "gpt2-small": dict(model=dict(vocab_size=50257, d_model=768, num_layers=12, num_heads=12, d_ff=3072), seq_len=256,
                       batch=4, precision="bf16", steps_per_round=2),  # fmt: skip
}


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matrix weight (unembedding included) + attention (see doc)."""
    per_layer = config.d_model * (3 * config.d_model + config.d_model + 2 * config.d_ff)
    matrix_params = config.num_layers * per_layer + config.vocab_size * config.d_model
    return 6 * matrix_params + 12 * config.num_layers * config.d_model * seq_len


def build_models(config: GPTConfig) -> dict:
    """{name: (model, loss function)} with identical weights."""
    torch.manual_seed(0)
    ours = GPT(config).train()
    hf_config = GPT2Config(**config_to_hf_gpt2(config), use_cache=False, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(hf_config).train()
    missing, unexpected = hf.load_state_dict(gpt2_state_to_hf(ours.state_dict()), strict=False)
    assert not unexpected and all(name.endswith("attn.bias") for name in missing), (missing, unexpected)

    def ours_loss(x, y):
        return ours(x, y)[1]

    def hf_loss(x, y):  # the same loss as ours: mean cross-entropy in fp32 over (x, y) windows
        logits = hf(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    return {"gptoss": (ours, ours_loss), "transformers": (hf, hf_loss)}


def make_step(model, loss_fn, precision: str):
    """One training step, identical for both models."""
    optimizer = adamw(model, 6e-4, 0.1, fused=True)

    def step(x, y) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run_config(name: str, rounds: int, tokens) -> dict:
    """Median step time of each model, measured alternately, and the derived figures."""
    spec = CONFIGS[name]
    config = GPTConfig(**spec["model"], max_seq_len=max(spec["seq_len"], 256), dropout=0.0)
    models = build_models(config)
    steps = {n: make_step(model, loss_fn, spec["precision"]) for n, (model, loss_fn) in models.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(tokens % config.vocab_size, spec["batch"], spec["seq_len"], generator) for _ in range(8)]

    first = {n: step(*batches[0]) for n, step in steps.items()}  # also the warm-up step
    assert math.isclose(first["gptoss"], first["transformers"], rel_tol=2e-2), first  # same model, same data
    times = {n: [] for n in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for n in order:
            for i in range(spec["steps_per_round"]):
                x, y = batches[(r + i) % len(batches)]
                tic = time.perf_counter()
                steps[n](x, y)
                times[n].append(time.perf_counter() - tic)
    tokens_per_step = spec["batch"] * spec["seq_len"]
    result = {"name": name, "precision": spec["precision"], "params": sum(p.numel() for p in models["gptoss"][0].parameters())}
    for n, ts in times.items():
        step_s = statistics.median(ts)
        gflops = flops_per_token(config, spec["seq_len"]) * tokens_per_step / step_s / 1e9
        result[n] = {"step_ms": step_s * 1e3, "tokens_per_s": tokens_per_step / step_s,
                     "mfu": gflops / PEAK_GFLOPS[spec["precision"]], "gflops": gflops}  # fmt: skip
    result["speedup"] = result["transformers"]["step_ms"] / result["gptoss"]["step_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the two models (default: 6)")
    args = parser.parse_args()
    # training text: Tiny Shakespeare's bytes stand in for token ids (speed does not depend on them)
    from gptoss.data.corpora import shakespeare_path

    tokens = torch.frombuffer(bytearray(shakespeare_path().read_bytes()), dtype=torch.uint8).long()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}\n")
    print("| config | precision | params | model | step (ms) | tokens/s | GFLOP/s | MFU | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        r = run_config(name, args.rounds, tokens)
        for n in ("gptoss", "transformers"):
            m = r[n]
            speedup = f"**{r['speedup']:.2f}x**" if n == "gptoss" else "1.00x"
            print(f"| {name} | {r['precision']} | {r['params'] / 1e6:.1f}M | {n} | {m['step_ms']:.1f} | "
                  f"{m['tokens_per_s']:,.0f} | {m['gflops']:.0f} | {m['mfu']:.0%} | {speedup} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
