"""Does the MXFP4 kernel decode gpt-oss-20b as the PyTorch path does? Greedy tokens and logits, in fp32.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_20b_agreement.py --checkpoint DIR \\
        [--prompt-tokens 16] [--steps 64]

In bf16 the two paths cannot agree token for token on a random model: its 201,088 logits are
~1 apart, rounded to 2^-5 near the top, and the two paths round their sums differently (the kernel
sums in fp32 and rounds once, the PyTorch path rounds each decoded expert's products to bf16), so a
near-tie flips within a few tokens and the texts part (bench_vs_llamacpp.py's check shows it). In
fp32 the rounding is 2^16 times finer, so what remains is the question itself: does the kernel
compute the same function? The checkpoint (bench_vs_llamacpp's random gpt-oss-20b, DIR) is loaded
with every bf16 weight cast to fp32 (~17 GB; the experts stay MXFP4), and:

  - the kernel path: its experts computed by the MXFP4 kernel from the packed bytes (fp32 inputs
    split into 3 bf16 terms, as accurate as fp32: mxfp4_kernel.c), the rest by PyTorch;
  - the PyTorch path: each expert decoded to fp32, then PyTorch's matmul (the path without the kernel).

Only the experts differ: the fp32 linear kernels would need a second copy of the weights (their
tiles), which does not fit in 24 GB beside the first; they are checked against F.linear in
tests/inference/test_cpu_kernel.py, and the whole prepared model on gpt-oss-tiny in the tests.
Each path greedy-decodes --steps tokens after the same random prompt; then both compute the logits
of the same text (the prompt and the kernel's tokens) at every position, which are compared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_llamacpp import greedy  # noqa: E402
from machine import describe  # noqa: E402

from gptoss import GPT  # noqa: E402
from gptoss.checkpoints.mxfp4 import PackedExperts  # noqa: E402
from gptoss.inference.mxfp4_kernel import KernelExperts, use_kernel_experts  # noqa: E402


def set_path(model: GPT, kernel: bool) -> None:
    """Put every MoE layer of `model` (already through use_kernel_experts) on the kernel path or on
    the PyTorch path: the class changes, the buffers stay."""
    for module in model.modules():
        if isinstance(module, PackedExperts):
            module.__class__ = KernelExperts if kernel else PackedExperts


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a gpt-oss-20b directory (bench_vs_llamacpp.py writes one)")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()

    started = time.perf_counter()
    model = GPT.from_pretrained(args.checkpoint, dtype=torch.float32)
    print(f"loaded in fp32 in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if use_kernel_experts(model) == 0:  # the experts' bytes move into 2 MB pages once, as in prepare_for_inference
        raise RuntimeError("the MXFP4 kernel could not be built here (see mxfp4_kernel.library())")
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))

    tokens, seconds, logits = {}, {}, {}
    for path in ("kernel", "pytorch"):
        set_path(model, path == "kernel")
        _, tokens[path], seconds[path] = greedy(model, prompt, args.steps)
        print(f"{path} path: {args.steps} tokens in {seconds[path]:.0f} s", file=sys.stderr, flush=True)
    text = torch.cat([prompt, torch.tensor([tokens["kernel"]])], dim=1)
    for path in ("kernel", "pytorch"):
        set_path(model, path == "kernel")
        logits[path] = model(text)[0]  # (T, vocab)

    agree = next((i for i, (a, b) in enumerate(zip(tokens["kernel"], tokens["pytorch"])) if a != b), args.steps)
    difference = (logits["kernel"] - logits["pytorch"]).abs()
    top2 = logits["pytorch"].topk(2, dim=-1).values
    print(f"{describe()}; {torch.get_num_threads()} threads")
    print(f"{args.checkpoint.name} in fp32, prompt {args.prompt_tokens} random tokens, {args.steps} greedy steps\n")
    print("| check | result |")
    print("|---|---|")
    print(f"| greedy tokens identical | first {agree} of {args.steps} |")
    print(f"| same argmax, teacher-forced | {int((logits['kernel'].argmax(-1) == logits['pytorch'].argmax(-1)).sum())} of {text.shape[1]} positions |")
    print(f"| logits, max abs difference | {difference.max():.3g} (their std {logits['pytorch'].std():.3g}) |")
    print(f"| logits, max difference / max abs logit | {difference.max() / logits['pytorch'].abs().max():.3g} |")
    print(f"| smallest gap between the top two logits | {(top2[:, 0] - top2[:, 1]).min():.3g} |")
    print(f"| decode, kernel path / PyTorch path | {args.steps / seconds['kernel']:.2f} / {args.steps / seconds['pytorch']:.2f} tokens/s |")


if __name__ == "__main__":
    main()
