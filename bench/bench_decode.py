"""Prefill and decode speed (tokens/s) and peak memory of gptoss generation, against Hugging Face
`generate` on the same weights, in the same run; and the memory-bandwidth bound of decoding.

    flock /tmp/gptoss-cpu.lock .venv/bin/python bench/bench_decode.py

Each model (GPT-2 small and gpt-oss-tiny, random weights from a fixed seed) is written once as a
Hugging Face checkpoint; then, for every (model, batch, dtype), one fresh process per
implementation loads it (ours: GPT.from_pretrained + prepare_for_inference; theirs:
AutoModelForCausalLM.from_pretrained) and generates greedily from the same random prompts. Both are
timed the same way: t(1) = generate 1 new token (the prompt's prefill, mostly), t(n) = generate n;
prefill tok/s = batch * prompt / t(1) and decode tok/s = batch * (n - 1) / (t(n) - t(1)), each
time the best of --repeats. Peak RSS is the process's own maximum resident memory (VmHWM),
Python, torch and the libraries included. The implementations alternate, --rounds times, and for
each the round with the best decode speed is kept (its prefill and peak RSS are that round's): the
machine is shared and noisy, so compare ratios, not absolute figures. Both sides generate exactly
--new-tokens tokens (transformers' end-of-text stop is switched off in its generation config).

The bound: decoding one step reads every weight once (the embedding tables only a row; of the
experts at most batch * experts_per_token of them) and the KV cache (at the mean length of the
decode), so tokens/s <= batch * read bandwidth / bytes read per step. The bandwidth is measured
here as the speed of torch.sum over 512 MiB (machine.read_bandwidth: in 2 MB pages, as the C
kernels' weights are), before and after the generation runs, the higher kept
(one reading can land on a busy moment). A model whose weights fit in the caches (gpt-oss-tiny:
2.5 MB, under this machine's 32 MiB L3) is not bound by memory: its bound is given as n/a.
"bound vs HF" is the most any implementation could beat Hugging Face by in that run: the bound
over HF's measured speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_kernels import matrix_vector_table
from machine import read_bandwidth

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CONFIGS = [  # (preset, batch, dtype)
    ("gpt2-small", 1, "float32"),
    ("gpt2-small", 1, "bfloat16"),
    ("gpt2-small", 8, "float32"),
    ("gpt2-small", 8, "bfloat16"),
    ("gpt-oss-tiny", 1, "float32"),
    ("gpt-oss-tiny", 1, "bfloat16"),
    ("gpt-oss-tiny", 8, "float32"),
]


def write_checkpoint(preset: str, directory: Path) -> None:
    """A Hugging Face checkpoint of `preset` with random weights (seed 0)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GptOssConfig, GptOssForCausalLM

    from gptoss.config import GPTConfig
    from gptoss.checkpoints.hf import config_to_hf_gpt2, config_to_hf_gpt_oss

    config = GPTConfig.preset(preset, dropout=0.0)
    torch.manual_seed(0)
    if config.mlp == "moe":
        hf_config = config_to_hf_gpt_oss(config)
        model = GptOssForCausalLM(GptOssConfig(**{k: v for k, v in hf_config.items() if k not in ("model_type", "architectures")}))
    else:
        hf_config = config_to_hf_gpt2(config)
        model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in hf_config.items() if k not in ("model_type", "architectures")}))
    model.save_pretrained(directory)


# below this many bytes read per step, the weights stay in the caches: no memory bound
IN_CACHE_BYTES = 64 * 2**20


def bytes_per_step(preset: str, batch: int, dtype: torch.dtype, context: float) -> int:
    """Bytes one decoding step reads: every weight but the embedding tables (a row each; a tied
    table is read whole as the unembedding), of the experts only those routed to (at most batch *
    experts_per_token), and the KV cache of `context` tokens per sequence."""
    from gptoss.config import GPTConfig
    from gptoss.model import GPT

    config = GPTConfig.preset(preset)
    model = GPT(config, device="meta")
    active_experts = min(config.num_experts, batch * config.experts_per_token) if config.mlp == "moe" else 0
    count = 0.0
    for name, p in model.named_parameters():  # a tied unembedding is listed once, as wte
        if name == "transformer.wpe.weight" or (name == "transformer.wte.weight" and not config.tie_embeddings):
            continue
        count += p.numel() * (active_experts / config.num_experts if ".experts." in name else 1)
    count += batch * context * 2 * config.num_layers * config.kv_heads * config.head_size  # keys and values
    return int(count * dtype.itemsize)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------- one run
def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that
    survives exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")


def worker(impl: str, directory: str, batch: int, dtype_name: str, prompt_length: int, new_tokens: int, repeats: int) -> dict:
    """Load the checkpoint with `impl` (ours or hf), time generation, report as a dict."""
    dtype = DTYPES[dtype_name]
    if impl == "ours":
        from gptoss.generation import generate, prepare_for_inference
        from gptoss.model import GPT

        model = prepare_for_inference(GPT.from_pretrained(directory, dtype=dtype))
        vocab = model.config.vocab_size

        def run(n):
            return generate(model, prompt, n, temperature=0)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
        model.generation_config.eos_token_id = None  # exactly n tokens, as ours, with no extra logits processor
        vocab = model.config.vocab_size

        def run(n):
            return model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False, pad_token_id=0
            )

    prompt = torch.randint(0, vocab, (batch, prompt_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        run(2)  # warm-up
        first = min(timed(lambda: run(1)) for _ in range(repeats))
        total = min(timed(lambda: run(new_tokens)) for _ in range(repeats))
        tokens = run(new_tokens)[:, prompt_length:].tolist()
    return {
        "prefill": batch * prompt_length / first,
        "decode": batch * (new_tokens - 1) / (total - first),
        "rss_mib": peak_rss_mib(),
        "tokens": tokens,
    }


def run_worker(impl: str, directory: Path, batch: int, dtype: str, args) -> dict:
    command = [
        sys.executable, __file__, "--worker", impl, str(directory), str(batch), dtype,
        "--prompt-length", str(args.prompt_length), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{impl} {directory.name} batch {batch} {dtype} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "DIR", "BATCH", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "gpt-oss-tiny"], help="presets to measure")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to measure (default: 1 8)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES), help="default: both")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timings per process; the best is kept (default: 3)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation and configuration (default: 2)")
    parser.add_argument("--wait-for-bandwidth", type=float, metavar="GBPS",
                        help="first wait (checking every 45 s) until torch.sum reads at least GBPS GB/s: a quiet moment")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2: decode speed is timed over the tokens after the first")
    if not any(p in args.models and b in args.batches and d in args.dtypes for p, b, d in CONFIGS):
        parser.error(f"no measured configuration matches: choose among {CONFIGS}")
    if args.worker:
        impl, directory, batch, dtype = args.worker
        result = worker(impl, directory, int(batch), dtype, args.prompt_length, args.new_tokens, args.repeats)
        print(json.dumps(result))
        return

    bandwidth = read_bandwidth()
    while args.wait_for_bandwidth and bandwidth < args.wait_for_bandwidth * 1e9:
        print(f"  read bandwidth {bandwidth / 1e9:.1f} GB/s, waiting for {args.wait_for_bandwidth} GB/s", file=sys.stderr, flush=True)
        time.sleep(45)
        bandwidth = read_bandwidth()
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}; read bandwidth (torch.sum over 512 MiB) "
          f"{bandwidth / 1e9:.1f} GB/s\n")
    print("One decoding step of GPT-2 small's matrix-vector products (its 49 linear weights, one row of input):\n")
    print("| weights | way | bytes | time | read | of the bandwidth |")
    print("|---|---|---|---|---|---|")
    print("\n".join(matrix_vector_table(bandwidth)))
    print(f"\nGeneration: prompt {args.prompt_length} random tokens, {args.new_tokens} new, greedy\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models:
            directory = Path(tmp) / preset
            write_checkpoint(preset, directory)
            for name, batch, dtype in CONFIGS:
                if name != preset or batch not in args.batches or dtype not in args.dtypes:
                    continue
                best = {"ours": None, "hf": None}
                for _ in range(args.rounds):
                    for impl in best:
                        result = run_worker(impl, directory, batch, dtype, args)
                        if best[impl] is None or result["decode"] > best[impl]["decode"]:
                            best[impl] = result
                context = args.prompt_length + args.new_tokens / 2  # the cache's mean length while decoding
                rows.append((preset, batch, dtype, best["ours"], best["hf"], bytes_per_step(preset, batch, DTYPES[dtype], context)))
                print(f"  measured {preset} batch {batch} {dtype}", file=sys.stderr, flush=True)

    bandwidth = max(bandwidth, read_bandwidth())
    print(f"read bandwidth, the higher of before and after: {bandwidth / 1e9:.1f} GB/s\n")
    print("| model | batch | dtype | prefill tok/s | decode tok/s | peak RSS | HF prefill tok/s | HF decode tok/s "
          "| HF peak RSS | decode vs HF | bandwidth bound tok/s | bound vs HF | same tokens as HF |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, batch, dtype, ours, hf, step_bytes in rows:
        bound = batch * bandwidth / step_bytes
        bounds = f"{bound:,.0f} | {bound / hf['decode']:.2f}x" if step_bytes > IN_CACHE_BYTES else "n/a (in cache) | n/a"
        print(
            f"| {preset} | {batch} | {dtype} | {ours['prefill']:,.0f} | {ours['decode']:,.1f} | {ours['rss_mib']:,.0f} MiB "
            f"| {hf['prefill']:,.0f} | {hf['decode']:,.1f} | {hf['rss_mib']:,.0f} MiB | {ours['decode'] / hf['decode']:.2f}x "
            f"| {bounds} | {'yes' if ours['tokens'] == hf['tokens'] else 'no'} |"
        )


if __name__ == "__main__":
    main()
