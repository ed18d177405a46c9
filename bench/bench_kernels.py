"""GPT-2 small decoding at the memory's speed: the C kernels in fp32, bf16 and int8 against the bound
that the read bandwidth sets, measured in the same run, and against llama.cpp on the same weights.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_kernels.py [--llama-cpp DIR] [--threads 2]

DIR is a llama.cpp source tree with `build/bin/llama-bench` built and its `convert_hf_to_gguf.py`
(e.g. vendor/llama.cpp of PyPI's llama-cpp-python source distribution; see docs/inference.md).

Two tables:

1. One decoding step's matrix-vector products: GPT-2 small's 49 linear weights (random, in the
   model's order), one row of input: F.linear, oneDNN on its packed copy, the C kernel in each
   format; milliseconds, GB/s of weights read, and the fraction of the read bandwidth
   (machine.read_bandwidth: torch.sum over 512 MiB in 2 MB pages) reached. Best of 5.
2. Batch-1 decoding of GPT-2 small (random weights, seed 0; a prompt of 8 tokens, then 64 greedy
   ones): tokens/s = 63 / (t(64 new) - t(1 new)), best of --repeats, in a fresh process per format;
   the bytes one step reads (every linear weight in its format, the norms and biases, the KV
   cache at its mean length; of the embedding tables only a row, a tied table being read whole as
   the unembedding); the bound = bandwidth / bytes; the fraction of it reached. With --llama-cpp,
   llama.cpp's f32 and bf16 rows on the same weights: this project's Hugging Face export converted
   by convert_hf_to_gguf.py (--outtype f32 / bf16), `llama-bench -p 0 -n 64 -r REPEATS -t THREADS`
   (64 tokens generated from an empty context), its bytes per step counted the same way.

The bandwidth is measured before and after, the higher kept (a reading can land on a busy moment).
`gpt2_decode_rows()` returns table 2's rows as dicts, for bench_vs_llamacpp.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from machine import best_seconds as best_of, describe, read_bandwidth

FORMATS = ["fp32", "bf16", "int8"]  # prepare_for_inference's weights=
LLAMA_TYPES = {"fp32": "f32", "bf16": "bf16"}  # ours -> convert_hf_to_gguf.py's --outtype
PROMPT_TOKENS, NEW_TOKENS = 8, 64


# ------------------------------------------------------------------- table 1: matrix-vector products
def matrix_vector_table(bandwidth: float) -> list[str]:
    """Markdown rows: GPT-2 small's 49 linear weights times one row of input, per format and way."""
    import torch.nn as nn

    from gptoss.config import GPTConfig
    from gptoss.model import GPT

    model = GPT(GPTConfig.preset("gpt2-small"), device="meta")
    shapes = [(m.out_features, m.in_features) for m in model.modules() if isinstance(m, nn.Linear)]
    rows = []
    for name in FORMATS:
        nbytes, ways = format_ways(name, shapes)
        with torch.no_grad():
            for way, step in ways.items():
                seconds = best_of(step)
                rate = nbytes / seconds
                rows.append(f"| {name} | {way} | {nbytes / 1e6:.0f} MB | {seconds * 1e3:.1f} ms | {rate / 1e9:.1f} GB/s | {rate / bandwidth:.0%} |")
        del ways
        gc.collect()
    return rows


def format_ways(name: str, shapes: list[tuple[int, int]]) -> tuple[int, dict]:
    """Random weights of these shapes in format `name` (in 2 MB pages, as the kernels' are), and
    the ways to multiply them all by one row: {way: a function doing it}; with their bytes."""
    from gptoss.inference import cpu_kernel

    dtype = torch.bfloat16 if name == "bf16" else torch.float32
    weights = [cpu_kernel.in_large_pages(torch.randn(out, inp).to(dtype)) for out, inp in shapes]
    inputs = {inp: torch.randn(1, inp, dtype=dtype) for _, inp in shapes}
    kernel = cpu_kernel.library() is not None
    if name == "int8":
        quantized = [cpu_kernel.quantize_int8(w) for w in weights] if kernel else []
        ways = {"C kernel": lambda: [cpu_kernel.linear_int8(inputs[q.shape[1]], q, s, None) for q, s in quantized]} if kernel else {}
        return sum(q.numel() + s.numel() * 4 for q, s in quantized), ways
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
    ways = {
        "F.linear": lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in weights],
        "oneDNN, packed": lambda: [torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], p, None, "none", [], "") for w, p in zip(weights, packed)],
    }  # fmt: skip
    if kernel and name == "fp32":
        tiles = [cpu_kernel.pack_tiles(w) for w in weights]
        ways["C kernel, tiles"] = lambda: [cpu_kernel.linear(inputs[w.shape[1]], t, None, w.shape[0]) for w, t in zip(weights, tiles)]
    if kernel and name == "bf16":
        ways["C kernel, in place"] = lambda: [cpu_kernel.linear_bf16(inputs[w.shape[1]], w, None) for w in weights]
    return sum(w.numel() * w.element_size() for w in weights), ways


# ------------------------------------------------------------------------ table 2: decoding
def bytes_read_per_token(model, context: float) -> int:
    """Bytes one batch-1 decoding step of a prepared model reads: every linear weight as its layer
    holds it (int8: the int8 values and the row scales), the other parameters but the embedding
    tables (a row each; a tied table counts once, as the unembedding), and the KV cache of
    `context` tokens."""
    import torch.nn as nn

    from gptoss.inference import InferenceLinear

    counted, total = set(), 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for name, p in module.named_parameters(recurse=False):
            if id(p) in counted:
                continue
            counted.add(id(p))
            if isinstance(module, InferenceLinear) and name == "weight" and module.int8 is not None:
                q, scale = module.int8
                total += q.numel() + scale.numel() * 4
            else:
                total += p.numel() * p.element_size()
    config = model.config
    dtype_bytes = model.lm_head.weight.element_size()
    total += int(context * 2 * config.num_layers * config.kv_heads * config.head_size * dtype_bytes)
    return total


def write_gpt2_checkpoint(directory: Path) -> Path:
    """GPT-2 small with random weights (seed 0), fp32, as this project's Hugging Face export (with
    the gpt2 tokenizer's files when $GPTOSS_SHARED_DATA has them: llama.cpp's converter needs them)."""
    from gptoss.checkpoints import save_pretrained
    from gptoss.config import GPTConfig
    from gptoss.data.tokenizers import build_tokenizer, shared_data_dir
    from gptoss.model import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt2-small", dropout=0.0))
    files = shared_data_dir() / "tokenizers"
    return save_pretrained(model, directory, "hf", tokenizer=build_tokenizer("gpt2", files_dir=files))


def our_decode(directory: Path, weights: str, threads: int, repeats: int) -> dict:
    """Load the checkpoint, prepare it with `weights`, time batch-1 greedy decoding (this process)."""
    from gptoss.inference import generate, prepare_for_inference
    from gptoss.model import GPT

    torch.set_num_threads(threads)
    model = prepare_for_inference(GPT.from_pretrained(directory), weights=weights)
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))
    first = best_of(lambda: generate(model, prompt, 1, temperature=0), repeats)
    total = best_of(lambda: generate(model, prompt, NEW_TOKENS, temperature=0), repeats)
    return {
        "impl": "gptoss", "weights": weights, "tokens_per_s": (NEW_TOKENS - 1) / (total - first),
        "bytes_per_token": bytes_read_per_token(model, PROMPT_TOKENS + NEW_TOKENS / 2),
    }  # fmt: skip


def llama_decode(llama_cpp: Path, directory: Path, weights: str, threads: int, repeats: int, gguf_dir: Path) -> dict:
    """Convert the checkpoint to GGUF (once per type) and run llama-bench's batch-1 generation."""
    gguf = gguf_dir / f"gpt2-small-{LLAMA_TYPES[weights]}.gguf"
    if not gguf.exists():
        subprocess.run(
            [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(directory), "--outtype", LLAMA_TYPES[weights], "--outfile", str(gguf)],
            check=True, capture_output=True, env={"PYTHONPATH": str(llama_cpp / "gguf-py"), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    command = [str(llama_cpp / "build/bin/llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(NEW_TOKENS), "-t", str(threads), "-r", str(repeats), "-o", "json"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {"impl": "llama.cpp", "weights": weights, "tokens_per_s": result[0]["avg_ts"]}


def gpt2_decode_rows(threads: int = 2, repeats: int = 3, llama_cpp: Path | None = None, bandwidth: float | None = None) -> list[dict]:
    """Table 2 as dicts: {impl, weights, tokens_per_s, bytes_per_token, bound_tokens_per_s,
    fraction_of_bound}, ours in FORMATS and llama.cpp's in LLAMA_TYPES when `llama_cpp` (its source
    tree, built) is given; bandwidth: bytes/s, measured here (before and after) when not given."""
    measured = bandwidth or read_bandwidth()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_gpt2_checkpoint(Path(tmp) / "gpt2-small-hf")
        for weights in FORMATS:
            command = [sys.executable, __file__, "--worker", str(directory), weights, "--threads", str(threads), "--repeats", str(repeats)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        if llama_cpp is not None:
            ours = {row["weights"]: row["bytes_per_token"] for row in rows}
            for weights in LLAMA_TYPES:
                rows.append({**llama_decode(llama_cpp, directory, weights, threads, repeats, Path(tmp)), "bytes_per_token": ours[weights]})
    if bandwidth is None:
        measured = max(measured, read_bandwidth())
    for row in rows:
        row["bound_tokens_per_s"] = measured / row["bytes_per_token"]
        row["fraction_of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]
        row["bandwidth"] = measured
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("DIR", "WEIGHTS"), help=argparse.SUPPRESS)
    parser.add_argument("--llama-cpp", type=Path, metavar="DIR", help="a llama.cpp source tree with build/bin/llama-bench built")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads, ours and llama.cpp's (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; the best is kept (default: 3)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(our_decode(Path(args.worker[0]), args.worker[1], args.threads, args.repeats)))
        return
    torch.set_num_threads(args.threads)
    print(describe())
    bandwidth = read_bandwidth()
    print(f"read bandwidth (torch.sum over 512 MiB, 2 MB pages): {bandwidth / 1e9:.1f} GB/s\n")
    print("One decoding step of GPT-2 small's matrix-vector products (its 49 linear weights, one row of input):\n")
    print("| weights | way | bytes | time | read | of the bandwidth |")
    print("|---|---|---|---|---|---|")
    print("\n".join(matrix_vector_table(bandwidth)))
    rows = gpt2_decode_rows(args.threads, args.repeats, args.llama_cpp)
    print(f"\nGPT-2 small, batch-1 decoding ({args.threads} threads; read bandwidth, the higher of before and after: "
          f"{rows[0]['bandwidth'] / 1e9:.1f} GB/s):\n")  # fmt: skip
    print("| implementation | weights | decode tok/s | bytes per token | bound tok/s | of the bound |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['impl']} | {row['weights']} | {row['tokens_per_s']:.1f} | {row['bytes_per_token'] / 1e6:.0f} MB "
              f"| {row['bound_tokens_per_s']:.1f} | {row['fraction_of_bound']:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
