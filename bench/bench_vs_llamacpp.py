"""gpt-oss-20b decode and prefill by this project and by llama.cpp, on the same weights, in the same
run, each against the memory bound measured in that run.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_vs_llamacpp.py \\
        --checkpoint DIR --llama-bench LLAMA_CPP/build/bin/llama-bench --convert LLAMA_CPP/convert_hf_to_gguf.py

The checkpoint is a random full-size gpt-oss-20b in Hugging Face's real layout (MXFP4 experts, bf16
elsewhere, o200k_harmony tokenizer.json beside it), written to DIR by bench_load_20b's
write_checkpoint when DIR holds none (~13 GB, ~3 minutes). llama.cpp reads the same weights
converted by its own convert_hf_to_gguf.py (`--outtype bf16`: the MXFP4 experts are kept as they
are), written once to --gguf (default DIR.gguf). llama.cpp is built from PyPI's llama-cpp-python
source distribution (docs/inference.md says how); without --llama-bench its rows are left out.

Ours, in a fresh process: GPT.from_pretrained + prepare_for_inference (as `gptoss generate` does),
a warm-up pass, then --repetitions times: a prompt of --prompt-tokens random ids in one forward
pass (prefill tok/s) and --new-tokens greedy steps at batch 1 over the KV cache (decode tok/s);
the mean of the repetitions is reported, as llama-bench reports its own (avg_ts), and each
repetition is listed under the table. With --rounds N, ours and llama-bench run N times each,
alternated (the order flipping every round: the machine's speed drifts by minutes), and the
means are over every repetition of every round. Peak RSS: VmHWM, which counts the memory-mapped pages being
read too. Then, in the same process, --check-tokens greedy
steps again with the experts switched back to the PyTorch path (decoded to bf16 one at a time,
~0.3 tokens/s): how many of the first tokens agree. llama.cpp: `llama-bench -p P -n N -t threads`
(its tg test decodes from an empty context, ours after the prompt), peak RSS of its process.

Bytes read per decoded token: every weight once, except the token embedding (one row) and the
experts (experts_per_token of num_experts per layer), plus the KV cache at the decode's mean length.
The bound is the read bandwidth (bench/machine.py's read_bandwidth, torch.sum; measured before and
after, the higher kept) over those bytes. For prefill the bound given is the memory's too (every
expert read once for the whole prompt), which prefill, being compute-bound, stays far from.

With --gpt2, the GPT-2 small rows too, from bench/bench_kernels.py (see gpt2_rows), in the same
run and against the same bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, read_bandwidth  # noqa: E402

GB = 1e9


# ---------------------------------------------------------------------------------------- ours
def bytes_per_token(model, context: float, every_expert: bool = False) -> int:
    """Bytes one decoding step reads at batch 1 (see the module doc); every_expert: as a prompt's
    forward pass does, every expert of every layer."""
    config = model.config
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        nbytes = tensor.numel() * tensor.element_size()
        if name.startswith("transformer.wte.") and not config.tie_embeddings:
            nbytes = config.d_model * tensor.element_size()  # one row (tied, it is the unembedding too)
        elif ".experts." in name and not every_expert:
            nbytes = nbytes * config.experts_per_token // config.num_experts
        total += nbytes
    itemsize = model.lm_head.weight.element_size()
    for layer in range(config.num_layers):
        keys = min(context, config.sliding_window) if config.is_sliding_layer(layer) else context
        total += int(2 * config.kv_heads * config.head_size * itemsize * keys)
    return total


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")


def greedy(model, prompt: torch.Tensor, steps: int) -> tuple[float, list[int], float]:
    """(prefill seconds, `steps` greedy tokens, their decode seconds) from a fresh KV cache."""
    cache = model.new_cache(1, capacity=prompt.shape[1] + steps + 1)
    started = time.perf_counter()
    logits = model(prompt, cache=cache, logits_to_keep=1)
    prefill_s = time.perf_counter() - started
    token = logits[:, -1].argmax(-1, keepdim=True)
    tokens = [int(token)]
    started = time.perf_counter()
    for _ in range(steps - 1):
        token = model(token, cache=cache, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
    return prefill_s, tokens, time.perf_counter() - started


@torch.no_grad()
def worker(checkpoint: str, prompt_tokens: int, new_tokens: int, check_tokens: int, repetitions: int) -> dict:
    from gptoss import GPT
    from gptoss.checkpoints.mxfp4 import PackedExperts
    from gptoss.inference import prepare_for_inference
    from gptoss.inference.mxfp4_kernel import KernelExperts

    started = time.perf_counter()
    model = prepare_for_inference(GPT.from_pretrained(checkpoint, progress=False))  # as `gptoss generate` does
    load_s = time.perf_counter() - started
    kernel_layers = sum(type(m) is KernelExperts for m in model.modules())
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    greedy(model, prompt, 1)  # a warm-up pass (as llama-bench's): it also touches every page once
    runs = [greedy(model, prompt, new_tokens) for _ in range(repetitions)]  # as llama-bench's -r
    tokens = runs[-1][1]
    prefill = [prompt_tokens / prefill_s for prefill_s, _, _ in runs]
    decode = [(new_tokens - 1) / decode_s for _, _, decode_s in runs]
    result = {
        "load_s": load_s,
        "kernel_layers": kernel_layers,
        "prefill_tok_s": statistics.mean(prefill),  # the mean over the repetitions, as llama-bench's avg_ts
        "decode_tok_s": statistics.mean(decode),
        "prefill_samples": prefill,
        "decode_samples": decode,
        "peak_rss": peak_rss(),
        "bytes_per_token": bytes_per_token(model, prompt_tokens + new_tokens / 2),
        "model_bytes": bytes_per_token(model, prompt_tokens / 2, every_expert=True),
        "threads": torch.get_num_threads(),
    }
    if check_tokens:
        # the same text (the prompt and the kernel's first tokens) through both paths, every position's
        # logits compared; then greedy decoding on the PyTorch path, which a random model's near-ties
        # in bf16 logits (201,088 of them, ~1 apart, rounded to 2^-5 near the top) make diverge early
        text = torch.cat([prompt, torch.tensor([tokens[:check_tokens]])], dim=1)
        fast_logits = model(text).float()[0]
        for module in model.modules():
            if type(module) is KernelExperts:
                module.__class__ = PackedExperts  # the current path: decode each expert to bf16, in PyTorch
        slow_logits = model(text).float()[0]
        _, reference, reference_s = greedy(model, prompt, check_tokens)
        agree = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
        top2 = slow_logits.topk(2, dim=-1).values
        result.update(
            check_tokens=len(reference), agreeing_tokens=agree, pytorch_path_decode_tok_s=(check_tokens - 1) / reference_s,
            positions=text.shape[1], same_argmax=int((fast_logits.argmax(-1) == slow_logits.argmax(-1)).sum()),
            max_logit_difference=float((fast_logits - slow_logits).abs().max()), logit_std=float(slow_logits.std()),
            median_top2_gap=float((top2[:, 0] - top2[:, 1]).median()),
        )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------- llama.cpp
def convert(checkpoint: Path, gguf: Path, script: Path | None, outtype: str = "bf16") -> None:
    """The checkpoint as a GGUF, by llama.cpp's own converter (gpt-oss in bf16: MXFP4 experts kept)."""
    if script is None:
        raise SystemExit(f"{gguf} does not exist: give --convert (llama.cpp's convert_hf_to_gguf.py) to make it")
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
    print(f"converting {checkpoint} -> {gguf} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(script), str(checkpoint), "--outtype", outtype, "--outfile", str(gguf)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def llama_bench(binary: Path, gguf: Path, threads: int, prompt_tokens: int, new_tokens: int, repetitions: int) -> dict:
    """llama-bench's prefill (pp) and decode (tg) tokens/s, and its process's peak RSS."""
    command = [str(binary), "-m", str(gguf), "-t", str(threads), "-p", str(prompt_tokens), "-n", str(new_tokens),
               "-r", str(repetitions), "-o", "json"]  # fmt: skip
    with open(os.devnull, "w") as quiet:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=quiet, text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (ru_maxrss: KiB on Linux)
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed (status {status})")
    rows = json.loads(output)
    speed = {("prefill" if row["n_prompt"] else "decode"): row for row in rows}
    return {"prefill_tok_s": speed["prefill"]["avg_ts"], "decode_tok_s": speed["decode"]["avg_ts"],
            "prefill_samples": speed["prefill"].get("samples_ts", []), "decode_samples": speed["decode"].get("samples_ts", []),
            "peak_rss": usage.ru_maxrss * 1024,
            "build": rows[0].get("build_commit", "?"), "cpu": rows[0].get("cpu_info", "?")}  # fmt: skip


# ---------------------------------------------------------------------------------------- GPT-2 small
def gpt2_rows(args, bandwidth: float) -> list[str]:
    """The GPT-2 small rows (ours in fp32, bf16, int8; llama.cpp's f32, bf16): measured by
    bench/bench_kernels.py's gpt2_decode_rows, which comes with the dense-linear kernels (issue 17's
    other half); a line saying so where this checkout does not have it yet."""
    try:
        from bench_kernels import gpt2_decode_rows
    except ImportError:
        return ["| GPT-2 small | (bench/bench_kernels.py's gpt2_decode_rows, with the dense-linear kernels, is not in this checkout) | | | | | |"]
    llama_tree = args.convert.parent if args.convert and args.llama_bench else None
    lines = []
    for r in gpt2_decode_rows(args.threads, llama_cpp=llama_tree, bandwidth=bandwidth):
        lines.append(f"| {r['impl']}, GPT-2 small {r['weights']} | decode, batch 1 | {r['tokens_per_s']:.1f} | "
                     f"{r['bytes_per_token'] / GB:.3f} GB | {r['bound_tokens_per_s']:.1f} | {r['fraction_of_bound']:.0%} | - |")
    return lines


# ---------------------------------------------------------------------------------------- main
def write_20b(directory: Path) -> None:
    from bench_load_20b import write_checkpoint

    from gptoss import GPTConfig
    from gptoss.checkpoints.export import write_hf_tokenizer
    from gptoss.data.tokenizers import build_tokenizer

    config = GPTConfig.preset("gpt-oss-20b")
    print(f"writing a random gpt-oss-20b to {directory} ...", file=sys.stderr, flush=True)
    write_checkpoint(directory, config)
    write_hf_tokenizer(build_tokenizer("o200k_harmony"), directory, config.max_seq_len)  # llama.cpp's converter needs tokenizer.json


def run_worker(args, check: bool) -> dict:
    """worker() in a fresh process (its peak RSS its own); check: compare with the PyTorch path too."""
    child = subprocess.run(
        [sys.executable, __file__, "--worker", "--checkpoint", str(args.checkpoint), "--threads", str(args.threads),
         "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
         "--check-tokens", str(args.check_tokens if check else 0), "--repetitions", str(args.repetitions)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(child.stdout.strip().splitlines()[-1])


def pooled(rounds: list[dict]) -> dict:
    """One side's measurements over all rounds: the first round's fields, tokens/s the mean of every
    repetition of every round (each round's repetitions kept in order), peak RSS the largest."""
    result = dict(rounds[0])
    for test in ("decode", "prefill"):
        result[f"{test}_samples"] = [v for r in rounds for v in r[f"{test}_samples"]]
        result[f"{test}_tok_s"] = statistics.mean(result[f"{test}_samples"])
    result["peak_rss"] = max(r["peak_rss"] for r in rounds)
    return result


def repetitions_text(side: dict) -> str:
    """One side's tokens/s in each repetition, decode then prefill."""
    return "; ".join(f"{test} {', '.join(f'{v:.2f}' for v in side[f'{test}_samples'])}" for test in ("decode", "prefill"))


def row(name: str, test: str, tok_s: float, nbytes: int, bandwidth: float, tokens_per_pass: int, rss: int | None) -> str:
    bound = tokens_per_pass * bandwidth / nbytes
    rss_text = f"{rss / GB:.2f} GB" if rss else "-"
    return f"| {name} | {test} | {tok_s:.2f} | {nbytes / GB:.2f} GB | {bound:.2f} | {tok_s / bound:.0%} | {rss_text} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a gpt-oss-20b HF directory (written when missing)")
    parser.add_argument("--gguf", type=Path, help="llama.cpp's copy (default: CHECKPOINT.gguf, converted when missing)")
    parser.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench binary (without: no llama.cpp rows)")
    parser.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py (needed when the GGUF is missing)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--check-tokens", type=int, default=16, help="greedy steps compared with the PyTorch path (0: none)")
    parser.add_argument("--repetitions", type=int, default=2, help="timed runs of each side, their mean reported (llama-bench's -r)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both sides, alternated (the machine's speed drifts)")
    parser.add_argument("--gpt2", action="store_true", help="also the GPT-2 small rows (see gpt2_rows)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(str(args.checkpoint), args.prompt_tokens, args.new_tokens, args.check_tokens, args.repetitions)))
        return

    if not (args.checkpoint / "config.json").is_file():
        write_20b(args.checkpoint)
    gguf = args.gguf or args.checkpoint.with_suffix(".gguf")
    if args.llama_bench and not gguf.is_file():
        convert(args.checkpoint, gguf, args.convert)

    bandwidth = read_bandwidth()
    ours_rounds, theirs_rounds = [], []
    sides = ["ours", "llama.cpp"] if args.llama_bench else ["ours"]
    for round_ in range(args.rounds):  # the two sides alternate, the order flipping every round
        for side in sides[::-1] if round_ % 2 else sides:
            if side == "ours":
                ours_rounds.append(run_worker(args, check=round_ == 0))
            else:
                theirs_rounds.append(llama_bench(args.llama_bench, gguf, args.threads, args.prompt_tokens,
                                                 args.new_tokens, args.repetitions))  # fmt: skip
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    ours = pooled(ours_rounds)
    theirs = pooled(theirs_rounds) if theirs_rounds else None
    bandwidth = max(bandwidth, read_bandwidth())
    gpt2 = gpt2_rows(args, bandwidth) if args.gpt2 else []

    per_token, whole = ours["bytes_per_token"], ours["model_bytes"]
    print(f"\n{describe()} | read bandwidth (torch.sum) {bandwidth / GB:.1f} GB/s\n")
    print(f"{args.checkpoint.name} (random values; gpt-oss-20b: MXFP4 experts, bf16 elsewhere), batch 1, {args.threads} threads; prompt "
          f"{args.prompt_tokens} tokens, then {args.new_tokens} greedy tokens; ours: {ours['kernel_layers']} "
          f"layers of experts on the MXFP4 kernel, loaded in {ours['load_s']:.0f} s"
          + (f"; llama.cpp build {theirs['build']}" if theirs else "") + "\n")
    print("| implementation | test | tokens/s | bytes read per pass | memory bound tokens/s | fraction of bound | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print(row("gptoss", "decode, batch 1", ours["decode_tok_s"], per_token, bandwidth, 1, ours["peak_rss"]))
    if theirs:
        print(row("llama.cpp", f"decode (tg{args.new_tokens})", theirs["decode_tok_s"], per_token, bandwidth, 1, theirs["peak_rss"]))
    print(row("gptoss", f"prefill {args.prompt_tokens} tokens", ours["prefill_tok_s"], whole, bandwidth, args.prompt_tokens, ours["peak_rss"]))
    if theirs:
        print(row("llama.cpp", f"prefill (pp{args.prompt_tokens})", theirs["prefill_tok_s"], whole, bandwidth, args.prompt_tokens, theirs["peak_rss"]))
    for line in gpt2:
        print(line)
    print(f"\nEach repetition, tokens/s: gptoss {repetitions_text(ours)}" + (f"; llama.cpp {repetitions_text(theirs)}" if theirs else ""))
    if "check_tokens" in ours:
        print(f"\nMXFP4 kernel vs the PyTorch path (experts decoded to bf16; {ours['pytorch_path_decode_tok_s']:.2f} "
              f"tokens/s) on the same {ours['positions']} tokens: the same argmax at {ours['same_argmax']} positions, "
              f"logits differ by at most {ours['max_logit_difference']:.3f} (their std: {ours['logit_std']:.3f}; median "
              f"gap between the top two: {ours['median_top2_gap']:.3f}); greedy decoding: the first "
              f"{ours['agreeing_tokens']} of {ours['check_tokens']} tokens agree")


if __name__ == "__main__":
    main()
