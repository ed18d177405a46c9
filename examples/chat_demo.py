"""From a base model to a chat model on 2 CPU cores: pretrain, fine-tune (full and LoRA), measure.

    python examples/chat_demo.py [--out runs/chat-demo] [--quick]        (or: make chat-demo)

1. pretrain a tiny char-level base model on the Python standard library's source (`gptoss train`)
2. generate a synthetic task: two-number addition word problems; the assistant works the sum out
   column by column from the right in its reasoning part and gives the result as its answer
3. measure the base, with the chat template's tokens added (what fine-tuning starts from), on
   held-out problems with `gptoss eval --answers` (greedy exact match of the answer)
4. fine-tune it on the training problems, fully and with LoRA (`gptoss train` with an [sft] table)
5. measure both again; print a table (accuracy, time, trainable share) and write results.json

Everything is offline and seeded; the problems are generated here, by `addition_problem`, and no
held-out problem (the pair of numbers) is among the training ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

NAMES = ("Ann", "Bob", "Cleo", "Dev", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun")
THINGS = ("apples", "books", "coins", "shells", "stamps", "marbles", "cards", "pens")
STORIES = (
    "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "A box holds {a} {things}. {name} puts in {b} more. How many {things} are in the box?",
    "{name} found {a} {things} on Monday and {b} on Tuesday. How many {things} in all?",
)


def column_working(a: int, b: int) -> str:
    """The sum worked out as on paper, one column at a time from the right: for 59 + 98,
    "59+98: 9+8=17 c1, 5+9+1=15 c1, so 157" (the numbers, each column's sum and carry, the result)."""
    digits = max(len(str(a)), len(str(b)))
    xs, ys = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    steps, carry = [], 0
    for x, y in zip(xs, ys):
        total = int(x) + int(y) + carry
        steps.append(f"{x}+{y}{f'+{carry}' if carry else ''}={total} c{total // 10}")
        carry = total // 10
    return f"{a}+{b}: " + ", ".join(steps) + f", so {a + b}"


def addition_problem(rng: random.Random, a: int, b: int) -> dict:
    """The word problem a + b as a conversation: the working in the reasoning part, the sum as the answer."""
    question = rng.choice(STORIES).format(name=rng.choice(NAMES), things=rng.choice(THINGS), a=a, b=b)
    assistant = {"role": "assistant", "thinking": column_working(a, b), "content": str(a + b)}
    return {"messages": [{"role": "user", "content": question}, assistant]}


def split_problems(rng: random.Random, digits: int, train: int, held_out: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out problems on disjoint pairs of numbers (each of `digits` digits): no
    held-out sum is ever seen in training, in any wording."""
    low, high = 10 ** (digits - 1), 10**digits - 1
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    rng.shuffle(pairs)
    if train + held_out > len(pairs):
        raise SystemExit(f"only {len(pairs)} pairs of {digits}-digit numbers: ask for fewer problems")
    return [addition_problem(rng, a, b) for a, b in pairs[held_out : held_out + train]], [addition_problem(rng, a, b) for a, b in pairs[:held_out]]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def gptoss(*args: str) -> str:
    """Run a gptoss command in a subprocess; returns its standard output (raises on failure)."""
    result = subprocess.run([sys.executable, "-m", "gptoss", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"gptoss {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def timed(what: str, *args: str) -> tuple[str, float]:
    print(f"... {what}", flush=True)
    tic = time.perf_counter()
    out = gptoss(*args)
    return out, time.perf_counter() - tic


def accuracy(checkpoint: Path, answers: Path) -> float:
    out, _ = timed(f"gptoss eval --checkpoint {checkpoint} --answers {answers.name}", "eval", "--checkpoint", str(checkpoint),
                   "--answers", str(answers), "--max-new-tokens", "64", "--batch-size", "50", "--json")  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])["answers"]["accuracy"]


def latest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/chat-demo", help="folder for the runs and results (default: runs/chat-demo)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each, to check the pipeline (tests)")
    parser.add_argument("--digits", type=int, default=2, help="digits of each number added (default: 2)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="updates of pretraining (default: 300)")
    parser.add_argument("--sft-steps", type=int, default=1200, help="updates of full fine-tuning (default: 1200)")
    parser.add_argument("--lora-steps", type=int, default=1200, help="updates of LoRA fine-tuning (default: 1200)")
    parser.add_argument("--base", help="an existing base checkpoint to fine-tune (skips pretraining)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {"pretrain": 8, "full": 8, "lora": 8} if args.quick else {"pretrain": args.pretrain_steps, "full": args.sft_steps, "lora": args.lora_steps}
    held_out = 20 if args.quick else 200

    train_problems, val_problems = split_problems(random.Random(0), args.digits, 200 if args.quick else 4000, held_out)
    train = write_jsonl(out / "train.jsonl", train_problems)
    val = write_jsonl(out / "val.jsonl", val_problems)
    answers = write_jsonl(out / "val_answers.jsonl", ({"messages": p["messages"][:1], "answer": p["messages"][1]["content"]} for p in val_problems))
    common = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "checkpoint.keep_last=1"]
    import torch

    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "steps": steps}

    # 1. the base model
    if args.base:
        base, results["pretrain_s"] = Path(args.base), 0.0
    else:
        _, results["pretrain_s"] = timed(
            "pretraining the base model", "train", "--set", f"run_dir={out / 'base'}", "--set", "data.corpus=pystdlib",
            "--set", "data.max_chars=2000000", "--set", f"data.data_dir={out / 'data'}", "--set", f"max_steps={steps['pretrain']}",
            "--set", "batch.seq_len=128", "--set", "batch.batch_size=32", "--set", "optim.learning_rate=2e-3",
            "--set", f"optim.warmup_steps={min(30, steps['pretrain'])}", "--set", "eval.eval_every=0", "--set", "eval.eval_sequences=32", *common,
        )  # fmt: skip
        base = latest(out / "base")

    # 2. what fine-tuning starts from, measured: the base with the chat template's tokens
    from gptoss.checkpoints import save_model
    from gptoss.train.config import SFTConfig
    from gptoss.train.sft import starting_model, starting_tokenizer

    tokenizer = starting_tokenizer(str(base))
    start = out / "start"
    save_model(starting_model(SFTConfig(init_from=str(base)), tokenizer.vocab_size).eval(), start, tokenizer)
    results["before"] = accuracy(start, answers)

    # 3. full fine-tuning and LoRA (adapters on every linear layer of the blocks, the new chat tokens' embedding rows trained)
    lora = ["--set", "sft.lora_rank=16", "--set", "sft.lora_alpha=32", "--set", "sft.lora_targets=attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"]
    for name, options, learning_rate in (("full", [], 3e-3), ("lora", lora, 5e-3)):
        summary, results[f"{name}_train_s"] = timed(
            f"fine-tuning ({name})", "train", "--set", f"run_dir={out / name}", "--set", f"sft.conversations={train}",
            "--set", f"sft.val_conversations={val}", "--set", f"sft.init_from={base}", "--set", f"max_steps={steps[name]}",
            "--set", "batch.seq_len=128", "--set", "batch.batch_size=32", "--set", f"optim.learning_rate={learning_rate}",
            "--set", "optim.min_lr=1e-5", "--set", "optim.weight_decay=0.0", "--set", f"optim.warmup_steps={min(30, steps[name])}",
            "--set", "eval.eval_every=0", "--set", "eval.eval_sequences=64", *options, *common,
        )  # fmt: skip
        results[f"{name}_model"] = next((line.removeprefix("model:").strip() for line in summary.splitlines() if line.startswith("model:")), "")
        results[name] = accuracy(latest(out / name), answers)

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nmachine: {results['machine']}; base pretrained in {results['pretrain_s']:.0f} s ({steps['pretrain']} steps)")
    print(f"{'model':<28}{'held-out exact match':>22}{'fine-tuning time':>20}")
    print(f"{'base + chat tokens':<28}{results['before']:>22.1%}{'-':>20}")
    for name in ("full", "lora"):
        print(f"{name + ' fine-tuning':<28}{results[name]:>22.1%}{results[name + '_train_s']:>18.0f} s   {results[name + '_model']}")


if __name__ == "__main__":
    main()
