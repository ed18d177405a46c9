"""Training speed: our GPT against transformers' GPT2LMHeadModel, and gpt-oss-tiny against tiny.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_train.py [--configs char gpt2-small gpt-oss-tiny] [--rounds 6]
        [--precision fp32|bf16] [--compile gptoss [transformers]]

Both models are built from one GPTConfig (the HF one through gptoss.hf, with our initial weights
copied in, so their first losses agree) and trained by the same step: forward, cross-entropy,
backward, global-norm clipping, the trainer's AdamW (gptoss.train.optim.adamw), zero_grad. Only the
model differs. HF runs its default attention (sdpa) and use_cache=False, as one trains with it.

The machine is shared and noisy, so the models alternate: each round times a few steps of each in
turn (the order flips every round); the table gives the median step of each.
The gpt-oss-tiny row compares two of our own models of the same width (d_model 128, 4 layers)
and the same step: `tiny` (GPT-2: LayerNorm, learned positions, multi-head, dense GELU MLP) and
`gpt-oss-tiny` (RMSNorm, RoPE, grouped-query attention with sinks, sliding window on even layers,
top-2 of 8 experts); its "speedup" is gpt-oss-tiny's tokens/s over tiny's.
Each config has its own precision (gpt-oss-tiny: bf16); --precision runs every chosen config in
fp32 or bf16 instead (fp32 is the fair comparison on a CPU without fast bf16 matrix products).

--compile adds rows: a copy of each named model (gptoss: our model, in gpt-oss-tiny's config both
of ours; transformers) whose forward and loss run through torch.compile, as the trainer's
compile = true does, timed in the same alternation (its speedup is over the same eager reference).
Backward runs the compiled backward graph; clipping and the optimizer step stay eager. Before the
timed rounds every model takes two warm-up steps, which is where compilation happens (the second
catches a recompile); the table's "first step" is the first one's time: compilation and one step.

Model FLOPs utilisation counts 6 FLOPs per weight-matrix parameter a token uses (forward +
backward, the unembedding included; for a mixture of experts the k experts it is routed to and the
router) plus 12 * layers * (heads * head_size) * keys seen for attention scores and values (causal
masking not discounted, a sliding window counted as its width), against the machine's fp32 or bf16
matmul peak measured by bench/machine.py in the same run (at its start and again at its end: the
higher reading counts, since other jobs only ever slow it down).
"""

from __future__ import annotations

import argparse
import copy
import math
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
from machine import describe, matmul_peak_gflops, read_bandwidth

PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CONFIGS = {
    # nanoGPT's CPU recipe for Shakespeare characters
    "char": dict(model=dict(vocab_size=65, d_model=128, num_layers=4, num_heads=4, d_ff=512), seq_len=64, batch=12,
                 precision="fp32", steps_per_round=10),  # fmt: skip
    "gpt2-small": dict(model=dict(vocab_size=50257, d_model=768, num_layers=12, num_heads=12, d_ff=3072), seq_len=256,
                       batch=4, precision="bf16", steps_per_round=2),  # fmt: skip
    # configs/gpt_oss_tiny.toml's model and batch, against GPT-2 `tiny` at the same width
    "gpt-oss-tiny": dict(preset="gpt-oss-tiny", baseline="tiny", seq_len=256, batch=8, precision="bf16",
                         steps_per_round=5),  # fmt: skip
}


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matrix weight a token uses (unembedding included) + attention (see doc)."""
    attention_width = config.num_heads * config.head_size
    qkv_out = (config.num_heads + 2 * config.kv_heads) * config.head_size
    per_layer = config.d_model * (qkv_out + attention_width)
    if config.mlp == "moe":  # k experts of gate_up (2 d_ff) and down (d_ff), and the router
        per_layer += config.experts_per_token * 3 * config.d_model * config.d_ff + config.d_model * config.num_experts
    else:
        per_layer += 2 * config.d_model * config.d_ff
    matrix_params = config.num_layers * per_layer + config.vocab_size * config.d_model
    attention = sum(min(seq_len, config.sliding_window if config.is_sliding_layer(layer) else seq_len)
                    for layer in range(config.num_layers))  # fmt: skip
    return 6 * matrix_params + 12 * attention_width * attention


def build_models(config: GPTConfig) -> dict:
    """{name: (model, config, loss function(model, x, y))}: ours and transformers', with identical weights."""
    torch.manual_seed(0)
    ours = GPT(config).train()
    hf_config = GPT2Config(**config_to_hf_gpt2(config), use_cache=False, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(hf_config).train()
    missing, unexpected = hf.load_state_dict(gpt2_state_to_hf(ours.state_dict()), strict=False)
    assert not unexpected and all(name.endswith("attn.bias") for name in missing), (missing, unexpected)

    return {"gptoss": (ours, config, ours_loss), "transformers": (hf, config, hf_loss)}


def ours_loss(model: GPT, x, y) -> torch.Tensor:
    """Our model's training loss on (x, y)."""
    return model(x, y)[1]


def hf_loss(model: GPT2LMHeadModel, x, y) -> torch.Tensor:
    """The same loss as ours for transformers' model: mean cross-entropy in fp32 over (x, y) windows."""
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def build_architectures(spec: dict) -> dict:
    """{name: (model, config, loss function(model, x, y))}: two of our presets (spec's preset and its baseline)."""
    models = {}
    for name in (spec["preset"], spec["baseline"]):
        torch.manual_seed(0)
        config = GPTConfig.preset(name, max_seq_len=max(spec["seq_len"], 256))
        model = GPT(config).train()
        models[name] = (model, config, ours_loss)
    return models


def add_compiled(models: dict, names: list[str]) -> tuple[dict, set[str]]:
    """models and, after them, "<name>, compiled" for each model named (gptoss: all of ours): a
    copy of it (the same initial weights), to be compiled by make_step; and the set of those names."""
    chosen = [n for n in models if ("transformers" if n == "transformers" else "gptoss") in names]
    compiled = {f"{n}, compiled": (copy.deepcopy(models[n][0]), *models[n][1:]) for n in chosen}
    return {**models, **compiled}, set(compiled)


def make_step(model, loss_fn, precision: str, compile: bool = False):
    """One training step, identical for every model: loss_fn(model, x, y) (through torch.compile if
    `compile`), backward, clipping, AdamW."""
    optimizer = adamw(model, 6e-4, 0.1, fused=True)

    def loss_of(x, y):
        return loss_fn(model, x, y)

    if compile:
        loss_of = torch.compile(loss_of)

    def step(x, y) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run_config(name: str, rounds: int, tokens, precision: str | None = None, compile: list[str] = ()) -> dict:
    """Median step time of each model, measured alternately, and the derived figures (MFU as a
    fraction of the peak: filled in by main, which measures it). precision: fp32 or bf16 in place
    of the config's own; compile: the models to add compiled copies of (add_compiled)."""
    spec = dict(CONFIGS[name], precision=precision or CONFIGS[name]["precision"])
    if "preset" in spec:
        models = build_architectures(spec)
    else:
        models = build_models(GPTConfig(**spec["model"], max_seq_len=max(spec["seq_len"], 256), dropout=0.0))
    models, compiled = add_compiled(models, compile)
    steps = {n: make_step(model, loss_fn, spec["precision"], n in compiled) for n, (model, _, loss_fn) in models.items()}
    vocab_size = min(config.vocab_size for _, config, _ in models.values())
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(tokens % vocab_size, spec["batch"], spec["seq_len"], generator) for _ in range(8)]

    first, first_step_s = {}, {}
    for n, step in steps.items():  # the warm-up: compilation, if any, happens here
        tic = time.perf_counter()
        first[n] = step(*batches[0])
        first_step_s[n] = time.perf_counter() - tic
        step(*batches[1])  # a recompile, if any, happens here too
    if "transformers" in first:  # same weights, same data: the same first loss
        assert all(math.isclose(first["gptoss"], loss, rel_tol=2e-2) for loss in first.values()), first
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
    result = {"name": name, "precision": spec["precision"], "models": list(models), "first_step_s": first_step_s}
    for n, ts in times.items():
        model, config, _ = models[n]
        step_s = statistics.median(ts)
        gflops = flops_per_token(config, spec["seq_len"]) * tokens_per_step / step_s / 1e9
        result[n] = {"step_ms": step_s * 1e3, "tokens_per_s": tokens_per_step / step_s, "gflops": gflops,
                     "params": sum(p.numel() for p in model.parameters())}  # fmt: skip
    reference = result["models"][1]  # ours (or the gpt-oss preset) first, its eager reference second
    result["speedup"] = {n: result[reference]["step_ms"] / result[n]["step_ms"] for n in result["models"]}
    return result


def measure_peaks() -> dict:
    """{precision: matmul GFLOP/s} of this machine now (bench/machine.py)."""
    return {precision: matmul_peak_gflops(dtype) for precision, dtype in PEAK_DTYPES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the models (default: 6)")
    parser.add_argument("--precision", choices=list(PEAK_DTYPES), help="for every config (default: each its own)")
    parser.add_argument("--compile", nargs="+", default=[], choices=["gptoss", "transformers"],
                        help="add rows: these models through torch.compile (see doc)")  # fmt: skip
    args = parser.parse_args()
    # training text: Tiny Shakespeare's bytes stand in for token ids (speed does not depend on them)
    from gptoss.data.corpora import shakespeare_path

    tokens = torch.frombuffer(bytearray(shakespeare_path().read_bytes()), dtype=torch.uint8).long()
    print(describe())
    peaks = measure_peaks()
    print(f"measured at the start: matmul 2048^3 fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
          f"read bandwidth {read_bandwidth() / 1e9:.1f} GB/s\n", flush=True)  # fmt: skip
    results = [run_config(name, args.rounds, tokens, args.precision, args.compile) for name in args.configs]
    at_end = measure_peaks()
    peaks = {precision: max(peaks[precision], at_end[precision]) for precision in peaks}
    print("| config | precision | params | model | first step (s) | step (ms) | tokens/s | GFLOP/s "
          "| MFU (of measured peak) | speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for i, n in enumerate(r["models"]):
            m = r[n]
            speedup = "1.00x" if i == 1 else f"**{r['speedup'][n]:.2f}x**"
            mfu = m["gflops"] / peaks[r["precision"]]
            print(f"| {r['name']} | {r['precision']} | {m['params'] / 1e6:.2f}M | {n} | {r['first_step_s'][n]:.1f} | "
                  f"{m['step_ms']:.1f} | {m['tokens_per_s']:,.0f} | {m['gflops']:.0f} | {mfu:.0%} | {speedup} |",
                  flush=True)  # fmt: skip
    print(f"\npeaks (the higher of the start and end readings): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
