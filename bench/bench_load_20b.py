"""Load a full-size gpt-oss-20b checkpoint and decode with it, on this CPU.

The checkpoint is random but laid out exactly as openai/gpt-oss-20b is on Hugging Face: three
safetensors shards and an index, every tensor with its real name, shape and dtype: the experts
MXFP4-packed (uint8 `*_blocks` / `*_scales`), everything else bf16. About 13.8 GB, written to
--path (default /tmp, never the repository) and deleted afterwards unless --keep.

Then a fresh process loads it with GPT.from_pretrained (experts stay packed: ~14 GB instead of ~42 GB
decoded) and decodes greedily at batch 1. It reports the load time (the checkpoint was just
written, so much of it is still in the page cache: a warm read, not a cold one from disk), the peak
resident memory
(VmHWM, which counts the memory-mapped pages being read as well as the model) and tokens/s.

    flock /tmp/gptoss-cpu.lock .venv/bin/python bench/bench_load_20b.py [--path DIR] [--keep] [--new-tokens 4]

Needs ~14 GB of free disk and ~16 GB of free memory. --layers N writes a shallower model (same
widths) for a quick trial.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from gptoss import GPT, GPTConfig
from gptoss.checkpoints.hf import config_to_hf_gpt_oss, gpt_oss_state_to_hf
from gptoss.checkpoints.mxfp4 import pack_experts_on_meta
from gptoss.checkpoints.export import MXFP4_QUANTIZATION_CONFIG

SHARD_BYTES = 4_800_000_000  # transformers' converter cuts openai/gpt-oss-20b into shards of <= 4.8 GB
GiB = 1 << 30


def write_checkpoint(directory: Path, config: GPTConfig, seed: int = 0) -> int:
    """Write a random gpt-oss checkpoint in Hugging Face's MXFP4 layout; returns its size in bytes."""
    model = GPT(config, device="meta")  # the names and shapes, without memory
    pack_experts_on_meta(model)
    hf_config = config_to_hf_gpt_oss(config)
    hf_config.update(quantization_config=MXFP4_QUANTIZATION_CONFIG, dtype="bfloat16")
    hf_names = gpt_oss_state_to_hf(model.state_dict(), config)  # HF name -> meta tensor
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def random_tensor(name: str, meta: torch.Tensor) -> torch.Tensor:
        if name.endswith("_blocks"):  # any byte is two valid FP4 codes
            return torch.from_numpy(np.frombuffer(rng.bytes(meta.numel()), dtype=np.uint8).reshape(meta.shape).copy())
        if name.endswith("_scales"):  # 2^-8 .. 2^-5: weights of the size trained ones have
            return torch.from_numpy(rng.integers(119, 123, size=meta.shape, dtype=np.uint8))
        if name.endswith("norm.weight"):
            return torch.ones(meta.shape, dtype=torch.bfloat16)
        return (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)

    directory.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    size = 0
    for name, meta in hf_names.items():  # group names into shards of <= SHARD_BYTES
        nbytes = meta.numel() * (1 if meta.dtype == torch.uint8 else 2)  # uint8 or bf16
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        file = f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors"
        tensors = {name: random_tensor(name, hf_names[name]) for name in names}  # one shard in memory at a time
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({name: file for name in names})
        print(f"  wrote {file}: {len(names)} tensors", file=sys.stderr, flush=True)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (directory / "config.json").write_text(json.dumps(hf_config, indent=1))
    return total


def peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM, which counts memory-mapped file pages
    as well as the process's own. (ru_maxrss would not do: Linux carries it over from the parent
    through fork and exec.)"""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def measure(directory: Path, new_tokens: int, prompt_tokens: int) -> dict:
    """In this (fresh) process: load, then prefill and decode greedily at batch 1."""
    start = time.perf_counter()
    model = GPT.from_pretrained(directory, progress=False)
    load_s = time.perf_counter() - start
    rss_after_load = peak_rss()

    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1, capacity=prompt_tokens + new_tokens)
    with torch.no_grad():
        start = time.perf_counter()
        next_token = model(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            next_token = model(next_token, cache=cache)[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - start
    packed = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith(("_blocks", "_scales")))
    plain = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "load_s": load_s,
        "rss_after_load": rss_after_load,
        "peak_rss": peak_rss(),
        "model_bytes": packed + plain,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "threads": torch.get_num_threads(),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("/tmp/gptoss-bench-20b"), help="where to write the checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint (and reuse it if present)")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick trial")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.path, args.new_tokens, args.prompt_tokens)))
        return

    config = GPTConfig.preset("gpt-oss-20b", **({"num_layers": args.layers} if args.layers else {}))
    if (args.path / "model.safetensors.index.json").is_file() and args.keep:
        print(f"reusing {args.path}", file=sys.stderr)
        size = sum(f.stat().st_size for f in args.path.glob("*.safetensors"))
        write_s = None
    else:
        if args.path.exists():
            shutil.rmtree(args.path)
        start = time.perf_counter()
        size = write_checkpoint(args.path, config)
        write_s = time.perf_counter() - start
    try:
        child = subprocess.run(
            [sys.executable, __file__, "--measure", "--path", str(args.path), "--new-tokens", str(args.new_tokens),
             "--prompt-tokens", str(args.prompt_tokens)],
            check=True, capture_output=True, text=True,
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.path, ignore_errors=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])

    decoded_bytes = GPT(config, device="meta").num_parameters() * 2  # every weight in bf16
    print(f"\ngpt-oss-{'20b' if not args.layers else f'20b widths, {args.layers} layers'} random checkpoint, "
          f"{cpu_name()}, {result['threads']} threads, PyTorch {torch.__version__}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| checkpoint on disk (MXFP4 experts + bf16) | {size / 1e9:.1f} GB |")
    if write_s is not None:
        print(f"| time to write it (random values) | {write_s:.0f} s |")
    print(f"| the same weights all in bf16 | {decoded_bytes / 1e9:.1f} GB |")
    print(f"| model in memory after loading (experts packed) | {result['model_bytes'] / GiB:.2f} GiB |")
    print(f"| load time (from_pretrained, fresh process, page cache warm) | {result['load_s']:.1f} s |")
    print(f"| peak RSS after loading | {result['rss_after_load'] / GiB:.2f} GiB |")
    print(f"| peak RSS after decoding | {result['peak_rss'] / GiB:.2f} GiB |")
    print(f"| prefill, {args.prompt_tokens} tokens | {result['prefill_s']:.1f} s |")
    print(f"| decode, batch 1, greedy, {args.new_tokens} tokens | {args.new_tokens / result['decode_s']:.3f} tokens/s "
          f"({result['decode_s'] / args.new_tokens:.1f} s/token) |")


if __name__ == "__main__":
    main()
